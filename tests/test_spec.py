import pytest

from laudnet.dynamic.spec import DynamicSpec, StageSpec


def test_one_value_applies_to_every_stage():
    spec = DynamicSpec.build("channel", 4, 2)
    assert spec.stages == (StageSpec("channel", 4, 2),) * 4


def test_per_stage_values_as_strings_and_lists():
    spec = DynamicSpec.build("spatial-spatial-spatial-static", "4-4-2-1", [1, 2, 4, 8])
    assert spec.modes == ("spatial", "spatial", "spatial", "static")
    assert [s.spatial_granularity for s in spec.stages] == [4, 4, 2, 1]
    assert [s.channel_granularity for s in spec.stages] == [1, 2, 4, 8]
    assert DynamicSpec.build(**spec.to_dict()) == spec


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "dense"}, "accepted modes are static, spatial, channel, layer, both"),
        ({"mode": "spatial-channel"}, "one value or 4 values"),
        ({"spatial_granularity": 0}, "positive integer"),
        ({"spatial_granularity": "4-4-x-1"}, "positive integer"),
        ({"channel_granularity": -2}, "positive integer"),
        ({"channel_granularity": 1.5}, "positive integer"),
        ({"spatial_granularity": "1-2-3"}, "one value or 4 values"),
    ],
)
def test_invalid_values_name_what_is_accepted(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicSpec.build(**kwargs)


def test_stage_properties():
    assert StageSpec("layer").has_spatial and not StageSpec("layer").has_channel
    assert StageSpec("both").has_spatial and StageSpec("both").has_channel
    assert not StageSpec("static").is_dynamic

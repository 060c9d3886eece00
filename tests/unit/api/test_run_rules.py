"""Docker's rules for a container's command and environment, as the api applies them."""

import pytest

from berth.api.v1 import api_pb2
from berth.image.v1 import image_pb2
from services.api.servicer import container_args, merge_env
from services.common import errors


def cfg(**kw) -> image_pb2.ImageConfig:
    return image_pb2.ImageConfig(**kw)


def test_command_overrides_cmd_but_keeps_entrypoint():
    spec = api_pb2.RunSpec(command=["-c", "echo hi"])
    assert container_args(spec, cfg(entrypoint=["sh"], cmd=["-l"])) == ["sh", "-c", "echo hi"]


def test_image_cmd_used_without_command():
    assert container_args(api_pb2.RunSpec(), cfg(cmd=["sh"])) == ["sh"]


def test_entrypoint_flag_resets_image_cmd():
    spec = api_pb2.RunSpec(entrypoint=["echo"], entrypoint_set=True)
    assert container_args(spec, cfg(entrypoint=["sh"], cmd=["-l"])) == ["echo"]


def test_empty_entrypoint_flag_clears_it():
    spec = api_pb2.RunSpec(entrypoint_set=True, command=["true"])
    assert container_args(spec, cfg(entrypoint=["sh", "-c"])) == ["true"]


def test_no_command_is_invalid():
    with pytest.raises(errors.InvalidArgument, match="No command specified"):
        container_args(api_pb2.RunSpec(), cfg())


def test_user_env_overrides_image_env_by_name():
    assert merge_env(["PATH=/bin", "A=1"], ["A=2", "B=3"]) == ["PATH=/bin", "A=2", "B=3"]

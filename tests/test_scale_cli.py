"""The --ray options of `llamapyz serve` (llamapyz/cli/serving.py, llamapyz/scale/options.py) and Ray staying an
optional extra: never imported without --ray, one error line with the pip command when missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from llamapyz.cli.main import main
from llamapyz.scale.options import parse_autoscale
from tests.synth import write_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "tiny.gguf"
    write_model(path, "llama", "Q8_0")
    return str(path)


def serve(*args: str):
    return CliRunner().invoke(main, ["serve", *args])


def test_autoscale_syntax():
    assert parse_autoscale("1..4") == (1, 4) and parse_autoscale(" 0 .. 2 ") == (0, 2)
    for bad in ("4", "1-4", "3..1", "0..0", "a..b"):
        with pytest.raises(ValueError):
            parse_autoscale(bad)


def test_bad_ray_options_are_usage_errors(model):
    result = serve("-m", model, "--ray", "--autoscale", "3..1")
    assert result.exit_code == 1 and "--autoscale" in result.output and "MIN" in result.output
    result = serve("-m", model, "--replicas", "2")
    assert result.exit_code == 1 and "error: --replicas needs --ray" in result.output
    result = serve("-m", model, "--ray", "--replicas", "2", "--autoscale", "1..2")
    assert result.exit_code == 1 and "not both" in result.output


def test_without_ray_installed_ray_is_one_error_line_with_the_pip_command(model):
    code = (f"import sys; sys.modules['ray'] = None; sys.argv = ['llamapyz', 'serve', '-m', {model!r}, '--ray'];"
            "from llamapyz.cli.main import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == ["error: --ray needs Ray Serve, which is not installed",
                                          "hint: pip install 'llamapyz[ray]' (or pip install 'ray[serve]' into the "
                                          "Python that runs the archive)"]


def test_the_command_line_and_server_never_import_ray():
    code = ("import sys, llamapyz.cli.main, llamapyz.cli.serving, llamapyz.server, llamapyz.archive.launcher, "
            "llamapyz.scale, llamapyz.scale.options, llamapyz.scale.prefix, llamapyz.scale.replica, "
            "llamapyz.scale.launch; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr

"""The supported-stack check (autorlhf_nemo.versions): untested megatron-core / nemo-toolkit
releases are refused at start-up, naming what is installed and what is supported."""

import subprocess
import sys

import pytest

from autorlhf_nemo import versions


def _installed(monkeypatch, **found):
    """Pretend these distributions are installed at these versions (None: absent)."""
    monkeypatch.setattr(versions, "installed_version", lambda name: found.get(name.replace("-", "_")))


def test_this_environment_is_a_supported_stack():
    versions.check_supported()


@pytest.mark.parametrize("megatron, nemo", [("0.16.1", "2.7.3"), ("0.19.2", "3.0.0"), ("0.16.1", "3.0.0"),
                                            ("0.19.0", "2.7.0"), ("0.19.2", None),
                                            # NVIDIA container and pre-release builds
                                            ("0.19.2+nv25.11", "3.0.0rc1"), ("0.19rc1", "2.7.0a0+nv25.06")])
def test_tested_release_lines_pass(monkeypatch, megatron, nemo):
    _installed(monkeypatch, megatron_core=megatron, nemo_toolkit=nemo)
    versions.check_supported()


def test_megatron_between_the_stacks_is_refused_with_versions_and_fix(monkeypatch):
    _installed(monkeypatch, megatron_core="0.17.0", nemo_toolkit="3.0.0")
    with pytest.raises(versions.UnsupportedVersionError) as error:
        versions.check_supported()
    message = str(error.value)
    assert "megatron-core 0.17.0 is installed" in message
    assert "0.16.x (Python 3.11 stack) and 0.19.x (Python 3.12 stack)" in message
    expected = "'megatron-core>=0.19,<0.20'" if sys.version_info >= (3, 12) else "'megatron-core>=0.16.1,<0.17'"
    assert f"pip install {expected}" in message
    assert "nemo-toolkit" not in message


def test_old_nemo_is_refused(monkeypatch):
    _installed(monkeypatch, megatron_core="0.16.1", nemo_toolkit="2.5.3")
    with pytest.raises(versions.UnsupportedVersionError, match=r"nemo-toolkit 2\.5\.3 is installed; autorlhf_nemo "
                       r"supports 2\.7\.x \(Python 3\.11 stack\) and 3\.0\.x \(Python 3\.12 stack\): pip install "
                       r"'nemo-toolkit\[core\]"):
        versions.check_supported()


def test_both_problems_named_at_once(monkeypatch):
    _installed(monkeypatch, megatron_core="0.20.0rc1", nemo_toolkit="3.1.0")
    problems = versions.unsupported()
    assert [p.split(" is installed")[0] for p in problems] == ["megatron-core 0.20.0rc1", "nemo-toolkit 3.1.0"]


def test_runtime_refuses_before_starting_a_process_group(monkeypatch):
    from autorlhf_nemo.config.compose import compose_config
    from autorlhf_nemo.parallel import runtime

    _installed(monkeypatch, megatron_core="0.18.2", nemo_toolkit="3.0.0")
    monkeypatch.setattr(runtime.dist, "init_process_group",
                        lambda *a, **k: pytest.fail("a process group was started"))
    with pytest.raises(versions.UnsupportedVersionError, match="megatron-core 0.18.2 is installed"):
        runtime.initialize(compose_config(["algorithm=ppo", "task=randomwalks"]))


def test_cli_refuses_in_seconds_with_a_clear_message():
    """The real CLI in a fresh process, its version lookup answering an untested megatron-core."""
    code = ("import sys, autorlhf_nemo.versions as v; "
            "v.installed_version = lambda name: '0.17.1' if name == 'megatron-core' else None; "
            "sys.argv = ['autorlhf_nemo', 'algorithm=ppo']; "
            "import autorlhf_nemo.__main__ as m; m.main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "autorlhf_nemo: megatron-core 0.17.1 is installed; autorlhf_nemo supports 0.16.x" in proc.stderr
    assert "Traceback" not in proc.stderr

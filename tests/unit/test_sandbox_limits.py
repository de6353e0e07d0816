"""Limit parsing and layering, the rlimits they become, and how a finished run is classified."""

from __future__ import annotations

import resource
import signal

import pytest

from appliance.errors import InvalidRequest
from appliance.sandbox.limits import (
    DEFAULT_LIMITS,
    LimitCeiling,
    ProfileLimits,
    SandboxLimits,
    apply_request,
    parse_duration_s,
    parse_size_mb,
    rlimits_for,
)
from appliance.sandbox.results import ProcessFacts, classify

MiB = 1024 * 1024
CEILING = LimitCeiling(max_timeout_s=60, max_memory_mb=2048)


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("512", 512),
        ("512M", 512),
        ("512MiB", 512),
        ("2G", 2048),
        ("1.5g", 1536),
        ("800k", 1),
        ("1gb", 1024),
    ],
)
def test_sizes(text: str, mb: int) -> None:
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize(
    ("text", "seconds"), [("10", 10), ("10s", 10), ("250ms", 0.25), ("1.5m", 90), ("1h", 3600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "ten", "10 parsecs", "-5s", "0", "5x"])
def test_bad_durations_say_how_to_write_one(bad: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_duration_s(bad)
    assert "10s" in err.value.message or "above zero" in err.value.message


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="512M"):
        parse_size_mb("lots")
    with pytest.raises(InvalidRequest):
        parse_size_mb("0M")


def test_profile_layers_replace_only_what_they_set() -> None:
    merged = DEFAULT_LIMITS.merged(ProfileLimits(memory_mb=384, nproc=128))
    assert (merged.memory_mb, merged.nproc) == (384, 128)
    assert merged.timeout_s == DEFAULT_LIMITS.timeout_s
    assert DEFAULT_LIMITS.merged(None) is DEFAULT_LIMITS


def test_request_overrides_within_the_ceiling() -> None:
    limits = apply_request(SandboxLimits(cpu_s=3), timeout_s=20, memory_mb=1024, ceiling=CEILING)
    assert (limits.timeout_s, limits.memory_mb) == (20, 1024)
    assert limits.cpu_seconds == 20  # a new timeout resets an explicit CPU budget to it
    assert (
        apply_request(DEFAULT_LIMITS, timeout_s=None, memory_mb=None, ceiling=CEILING)
        is DEFAULT_LIMITS
    )


@pytest.mark.parametrize(
    ("timeout", "memory", "param"),
    [
        (0, None, "timeout_s"),
        (61, None, "timeout_s"),
        (float("nan"), None, "timeout_s"),
        (None, 8, "memory_mb"),
        (None, 4096, "memory_mb"),
    ],
)
def test_request_overrides_out_of_range_name_the_field_and_the_maximum(
    timeout: float | None, memory: int | None, param: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        apply_request(DEFAULT_LIMITS, timeout_s=timeout, memory_mb=memory, ceiling=CEILING)
    assert err.value.param == param
    assert "sandbox.max_" in err.value.message


def test_rlimits_without_a_cgroup() -> None:
    limits = SandboxLimits(
        timeout_s=10, memory_mb=256, address_space_extra_mb=64, nproc=32, file_size_mb=8, nofile=100
    )
    rl = rlimits_for(limits)
    assert rl[resource.RLIMIT_CPU] == (10, 11)
    assert rl[resource.RLIMIT_AS] == (320 * MiB, 320 * MiB)
    assert rl[resource.RLIMIT_NPROC] == (32, 32)
    assert rl[resource.RLIMIT_FSIZE] == (8 * MiB, 8 * MiB)
    assert rl[resource.RLIMIT_NOFILE] == (100, 100)
    assert rl[resource.RLIMIT_CORE] == (0, 0)


def test_rlimits_leave_memory_and_processes_to_a_cgroup_and_add_spent_cpu() -> None:
    rl = rlimits_for(SandboxLimits(timeout_s=2.5), cgroup=True, cpu_used_s=0.7)
    assert resource.RLIMIT_AS not in rl and resource.RLIMIT_NPROC not in rl
    assert rl[resource.RLIMIT_CPU] == (4, 5)  # ceil(0.7 + 2.5)


LIMITS = SandboxLimits(timeout_s=5, memory_mb=100, nproc=64, output_kb=1024, file_size_mb=16)


def _c(**facts: object) -> tuple[str, int | None, int | None, str | None]:
    return classify(ProcessFacts(**facts), LIMITS)  # type: ignore[arg-type]


def test_classify_plain_exits() -> None:
    assert _c(returncode=0) == ("ok", 0, None, None)
    assert _c(returncode=3) == ("error", 3, None, None)


def test_classify_signals_as_shells_report_them() -> None:
    status, code, sig, reason = _c(returncode=128 + signal.SIGSEGV)
    assert (status, code, sig) == ("error", 139, signal.SIGSEGV)
    assert reason is not None and "SIGSEGV" in reason
    assert _c(returncode=128 + signal.SIGXCPU)[0] == "timeout"
    status, _, _, reason = _c(returncode=128 + signal.SIGXFSZ)
    assert status == "error" and reason is not None and "16 MB" in reason


def test_classify_limits_the_daemon_enforced() -> None:
    assert _c(returncode=137, killed_for="timeout")[0] == "timeout"
    status, _, _, reason = _c(returncode=137, killed_for="timeout", process_limit_hit=True)
    assert status == "killed" and reason is not None and "fork bomb" in reason
    assert _c(returncode=137, killed_for="output")[0] == "killed"
    assert _c(returncode=137, killed_for="workspace")[0] == "killed"


def test_classify_out_of_memory() -> None:
    assert _c(returncode=1, stderr_tail=b"...\nMemoryError\n")[0] == "oom"
    assert _c(returncode=134, peak_memory_mb=99.0)[0] == "oom"
    assert _c(returncode=137, cgroup_oom=True)[0] == "oom"
    assert (
        classify(
            ProcessFacts(returncode=1, stderr_tail=b"heap exhausted!"), LIMITS, (b"heap exhausted",)
        )[0]
        == "oom"
    )
    assert _c(returncode=0, stderr_tail=b"MemoryError")[0] == "ok"  # printed, not died of


def test_classify_a_fork_bomb_that_gave_up() -> None:
    status, _, _, reason = _c(
        returncode=1, stderr_tail=b"BlockingIOError: [Errno 11] Resource temporarily unavailable"
    )
    assert status == "error" and reason is not None and "process limit" in reason

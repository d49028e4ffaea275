"""Shared fixtures."""

import resource

import pytest
from hypothesis import HealthCheck, Phase, settings

from repred._log import limited

# Hypothesis profiles. The default run ("quick") tries a few cases of each
# property, the same cases every run, and reports a failure as found; the
# slow run in CI (``--hypothesis-profile=full``, see .ci/run) tries each
# property's full count (``helpers.examples``) from a fresh seed, and
# shrinks what fails. Neither has a deadline: a slow example on a busy
# machine is not a failure.
settings.register_profile(
    "quick",
    max_examples=10,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
)
settings.register_profile(
    "full",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("quick")


@pytest.fixture(autouse=True)
def _fresh_log_limits():
    """Each test sees the library's log limits afresh (they are per process)."""
    limited.reset()


@pytest.fixture(autouse=True)
def _open_files(request):
    """A test marked ``open_files(n)`` runs with room for ``n`` open files.

    The soft limit is raised for it (towards the hard limit, which only a
    privileged process could raise) and restored after it; where the hard
    limit is below ``n`` the test is skipped, saying so, rather than failing
    half-way with EMFILE.
    """
    marker = request.node.get_closest_marker("open_files")
    if marker is None:
        yield
        return
    needed = marker.args[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(
            f"needs {needed} open files at once, and the hard limit on open"
            f" files is {hard} (raise it with ulimit -Hn as root)"
        )
    if soft == resource.RLIM_INFINITY or soft >= needed:
        yield
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

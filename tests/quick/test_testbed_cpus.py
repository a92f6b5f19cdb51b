"""How many vCPUs the test guest gets (docs/testbed.md, "Scheduler code rewritten under TCG")."""
from types import SimpleNamespace

import pytest

from pykpatch.provider.debian import DebianRelease
from pykpatch.testbed.vm import default_cpus


@pytest.mark.parametrize("release, cpus", [
    ("6.1.0-56-cloud-amd64", 2),             # transitions leave scheduler code alone
    ("6.12.118+deb13-cloud-amd64", 1),       # cond_resched() static call rewritten
    ("6.12.118+deb12-cloud-amd64", 1),
    ("7.3.4+deb13-cloud-amd64", 1),          # and klp_sched_try_switch_key in __schedule()
])
def test_guests_of_kernels_whose_transitions_rewrite_scheduler_code_get_one_vcpu(release, cpus):
    kernel = SimpleNamespace(release=DebianRelease.parse(release))
    assert default_cpus(kernel) == cpus

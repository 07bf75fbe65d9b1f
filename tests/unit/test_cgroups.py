"""Build cgroups are found in every hierarchy, including v2's `unified` beside v1's controllers
(systemd's hybrid layout, where they leaked), and removed by a job's cleanup and by the sweeper."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dockguard.sandbox import cgroups

JOB = "0" * 31 + "1"


def hybrid(root: Path) -> list[Path]:
    """A v1 layout (pids, memory) with v2's `unified` beside it, each with dockguard's parent."""
    parents = []
    for hierarchy in ("pids", "memory", "unified"):
        (root / hierarchy).mkdir()
        (root / hierarchy / "cgroup.procs").write_text("")
        parents.append(root / hierarchy / cgroups.PARENT)
        parents[-1].mkdir()
    (root / "cpu,cpuacct").mkdir()  # not a cgroup here (no cgroup.procs): left alone
    return parents


def test_a_jobs_build_cgroups_go_in_every_hierarchy_and_only_the_jobs(tmp_path: Path) -> None:
    parents = hybrid(tmp_path)
    for parent in parents:
        (parent / f"{JOB}-build" / "docker-abc").mkdir(parents=True)  # the engine's child
        (parent / ("f" * 32 + "-build")).mkdir()
    cgroups.remove_job(JOB, tmp_path)
    for parent in parents:
        assert not (parent / f"{JOB}-build").exists()
        assert (parent / ("f" * 32 + "-build")).exists()


def test_v2_alone_has_one_parent(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("pids")
    (tmp_path / cgroups.PARENT / f"{JOB}-build").mkdir(parents=True)
    cgroups.remove_job(JOB, tmp_path)
    assert not (tmp_path / cgroups.PARENT / f"{JOB}-build").exists()


def test_the_sweeper_removes_old_build_cgroups_and_keeps_young_ones(tmp_path: Path) -> None:
    parents = hybrid(tmp_path)
    old, young = parents[2] / f"{JOB}-build", parents[2] / ("e" * 32 + "-build")
    old.mkdir()
    young.mkdir()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert cgroups.sweep(600, tmp_path) == 1
    assert not old.exists() and young.exists()


def test_the_build_cgroup_is_removed_from_unified_too(tmp_path: Path) -> None:
    parents = hybrid(tmp_path)
    cgroup = cgroups.BuildCgroup(f"{JOB}-build", 64, tmp_path)
    for parent in parents:
        (parent / f"{JOB}-build").mkdir()
    cgroup.remove(wait_s=0)
    assert not any((parent / f"{JOB}-build").exists() for parent in parents)


def test_no_cgroup_filesystem_is_no_error(tmp_path: Path) -> None:
    cgroups.remove_job(JOB, tmp_path / "absent")
    assert cgroups.sweep(0, tmp_path / "absent") == 0

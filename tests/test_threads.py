"""Each process's share of the cores (harness/launch/threads.py), with /proc/stat and the load
average replaced by hand-written values."""

import pytest

from harness.launch import threads

# /proc/stat as Linux writes it: the aggregate line, then one line per CPU
# (user nice system idle iowait irq softirq steal guest guest_nice)
STAT = """cpu  300 0 100 1500 100 0 0 0 0 0
cpu0 100 0 50 800 50 0 0 0 0 0
cpu1 200 0 50 700 50 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""


def test_cpu_jiffies_sums_the_named_cpus_and_leaves_idle_and_iowait_out():
    # by hand: cpu0 works 100 + 50 of 100 + 50 + 800 + 50 = 1000; cpu1 250 of 1000
    assert threads.cpu_jiffies(STAT, {0}) == (150, 1000)
    assert threads.cpu_jiffies(STAT, {1}) == (250, 1000)
    assert threads.cpu_jiffies(STAT, {0, 1}) == (400, 2000)
    assert threads.cpu_jiffies(STAT, {7}) is None


def _stat(*cpus: tuple[int, int]) -> str:
    """/proc/stat text with each CPU's (working, idle) jiffies as user and idle time."""
    lines = [f"cpu{i} {work} 0 0 {idle} 0 0 0 0 0 0" for i, (work, idle) in enumerate(cpus)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def machine(monkeypatch):
    """A 2-core machine, no cgroup quota, no thread variables set; ``set(samples, load)`` gives the
    two /proc/stat readings and the 1-minute load average."""
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "_quota_cores", lambda: None)
    monkeypatch.setattr(threads, "_GIVEN", {"HARNESS_THREADS": "", "OMP_NUM_THREADS": ""})
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)

    def set_machine(samples, load):
        threads._busy_cores.cache_clear()
        readings = iter(samples)
        monkeypatch.setattr(threads, "_read_stat", lambda: next(readings))
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))

    yield set_machine
    threads._busy_cores.cache_clear()  # no fake sample left for later tests in this process


def test_idle_cores_get_all_threads_though_the_load_average_still_counts_a_finished_run(machine):
    # both cores idle over the sample, while the load average still remembers a run that just ended
    machine([_stat((1000, 5000), (1000, 5000)), _stat((1001, 5019), (1000, 5020))], load=1.9)
    share = threads.thread_share()
    assert (share.threads, share.busy) == (2, 0)


def test_a_core_another_program_keeps_busy_is_left_to_it(machine):
    # cpu1 works 20 of 20 jiffies, cpu0 1 of 20: one core busy, though the load average is still low
    machine([_stat((1000, 5000), (1000, 5000)), _stat((1001, 5019), (1020, 5000))], load=0.1)
    share = threads.thread_share()
    assert (share.threads, share.busy) == (1, 1)


def test_half_a_busy_core_counts_as_busy_and_less_does_not(machine):
    machine([_stat((5, 5), (5, 5)), _stat((15, 15), (5, 25))], load=0.0)  # 10 of 40 jiffies: 0.5 core
    assert threads.thread_share().busy == 1
    machine([_stat((5, 5), (5, 5)), _stat((14, 16), (5, 25))], load=0.0)  # 9 of 40: 0.45 core
    assert threads.thread_share().busy == 0


def test_without_proc_stat_the_load_average_decides(machine):
    machine([None, None], load=1.2)
    share = threads.thread_share()
    assert (share.threads, share.busy) == (1, 1)


def test_a_thread_count_the_user_set_is_kept_and_nothing_is_sampled(machine, monkeypatch):
    monkeypatch.setattr(threads, "_GIVEN", {"HARNESS_THREADS": "3", "OMP_NUM_THREADS": ""})
    monkeypatch.setattr(threads, "_read_stat", lambda: pytest.fail("sampled /proc/stat"))
    share = threads.thread_share()
    assert (share.threads, share.source, share.busy) == (3, "HARNESS_THREADS", None)


def test_the_cores_are_sampled_once_per_process(machine):
    machine([_stat((5, 5), (5, 5)), _stat((5, 25), (25, 5))], load=0.0)  # one core busy, then no more readings
    assert [threads.thread_share().threads for _ in range(3)] == [1, 1, 1]


def test_torchrun_ranks_split_the_free_cores(machine, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    machine([_stat((5, 5), (5, 5)), _stat((5, 25), (5, 25))], load=0.0)
    assert threads.thread_share().threads == 1


def test_torchrun_ranks_starting_together_do_not_count_each_other_as_busy(machine, monkeypatch):
    # 4 cores, 2 ranks; the sample sees one core busy: the sibling rank starting up, not another program
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    busy_one = [_stat((5, 5), (5, 5), (5, 5), (5, 5)), _stat((25, 5), (5, 25), (5, 25), (5, 25))]
    machine(busy_one, load=0.0)
    assert (threads.thread_share().threads, threads.thread_share().busy) == (2, 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # alone, that core is another program's
    machine(busy_one, load=0.0)
    assert threads.thread_share().threads == 3

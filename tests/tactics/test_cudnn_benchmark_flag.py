"""The cuDNN conv tactics turn torch.backends.cudnn.benchmark on around their calls only; calls
that overlap in threads (the tuner's warm threads) leave the process's setting as it was."""
from __future__ import annotations

import threading

import torch

from kiln.tactics.conv import _Benchmark


def test_overlapping_calls_restore_the_process_setting() -> None:
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        inside, leave = threading.Barrier(3), threading.Event()
        seen: list[bool] = []

        def call() -> None:
            with _Benchmark():
                inside.wait()                    # both calls are inside at once
                seen.append(torch.backends.cudnn.benchmark)
                leave.wait()

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        inside.wait()
        assert torch.backends.cudnn.benchmark is True
        leave.set()
        for t in threads:
            t.join()
        assert seen == [True, True] and torch.backends.cudnn.benchmark is False
        with _Benchmark(), _Benchmark():        # nested on one thread
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before

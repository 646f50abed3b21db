"""Real MultiWorkerMirroredStrategy workers on localhost, for tests.

`Workers` starts one Python process per worker with its own `TF_CONFIG`
(free localhost ports, one CPU device each, one intra-op thread) that runs
a worker function given as "package.module:function":

    results = run_workers("tests.test_multiworker:fit_worker", tmp_path,
                          steps=4)

Each process imports the module, calls `function(index=i, out=out_dir,
**kwargs)` and exits; the function saves what it computed with
`save(out, index, **arrays)` and `run_workers` returns one dict of arrays
per worker. Output goes to `out/worker<i>.log`, quoted in failures. On a
timeout, a failure or leaving the `with` block, every process still
running is killed by its PID (SIGKILL): a worker whose peer died waits in a
collective op and would not exit by itself.

Run a worker by hand: `python -m tests.multiworker MODULE:FUNCTION OUT
INDEX JSON_KWARGS` with `TF_CONFIG` set.
"""

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save(out, index, **arrays):
    """Saves a worker's results as `out/worker<index>.npz`."""
    path = os.path.join(str(out), f"worker{index}.npz")
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)


class Workers:
    """A context manager over the processes of one localhost cluster.

    Args:
        target: "module:function" run by every worker.
        out: Directory for results and logs (created if missing).
        num_workers: Number of worker processes.
        **kwargs: JSON-serialisable keyword arguments of the function.
    """

    def __init__(self, target, out, num_workers=2, **kwargs):
        self.target, self.out = target, str(out)
        self.num_workers, self.kwargs = num_workers, kwargs
        self.processes = []
        os.makedirs(self.out, exist_ok=True)

    def __enter__(self):
        from keras_sam.distribution import local_tf_configs

        configs = local_tf_configs(self.num_workers)
        for index in range(self.num_workers):
            env = dict(
                os.environ,
                TF_CONFIG=configs[index],
                CUDA_VISIBLE_DEVICES="",
                KERAS_BACKEND="tensorflow",
                TF_CPP_MIN_LOG_LEVEL="2",
                TF_NUM_INTRAOP_THREADS="1",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get(
                    "PYTHONPATH", ""),
            )
            log = open(self.log_path(index), "w")
            command = [
                sys.executable, "-m", "tests.multiworker", self.target,
                self.out, str(index), json.dumps(self.kwargs),
            ]
            self.processes.append(subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT,
            ))
            log.close()
        return self

    def __exit__(self, *exc_info):
        self.kill_all()

    def log_path(self, index):
        return os.path.join(self.out, f"worker{index}.log")

    def logs(self, last=3000):
        """The tail of every worker's output, for failure messages."""
        parts = []
        for index in range(len(self.processes)):
            with open(self.log_path(index), errors="replace") as log:
                parts.append(f"--- worker {index} ---\n{log.read()[-last:]}")
        return "\n".join(parts)

    def kill(self, index, sig=signal.SIGKILL):
        """Sends `sig` to worker `index` by its PID if it still runs."""
        process = self.processes[index]
        if process.poll() is None:
            os.kill(process.pid, sig)
            process.wait()

    def kill_all(self):
        for index in range(len(self.processes)):
            self.kill(index)

    def wait(self, timeout, indices=None):
        """Waits for the workers; returns their exit codes.

        On a timeout every worker is killed and an AssertionError carries
        the workers' output.
        """
        indices = range(len(self.processes)) if indices is None else indices
        deadline = time.monotonic() + timeout
        for index in indices:
            try:
                self.processes[index].wait(
                    max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill_all()
                raise AssertionError(
                    f"worker {index} of {self.target} still ran after "
                    f"{timeout} s; killed all.\n{self.logs()}"
                ) from None
        return [self.processes[i].returncode for i in indices]

    def results(self):
        """One dict of arrays per worker, from `out/worker<i>.npz`."""
        return [
            dict(np.load(os.path.join(self.out, f"worker{i}.npz")))
            for i in range(self.num_workers)
        ]


def run_workers(target, out, num_workers=2, timeout=240, **kwargs):
    """Runs `target` on a fresh localhost cluster; returns its results.

    Raises:
        AssertionError: a worker failed or ran past `timeout` seconds (all
            are killed), with the workers' output.
    """
    with Workers(target, out, num_workers, **kwargs) as workers:
        codes = workers.wait(timeout)
        if any(codes):
            raise AssertionError(
                f"workers of {target} exited with {codes}\n{workers.logs()}"
            )
        return workers.results()


def _main(argv):
    target, out, index, kwargs = argv
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    function(index=int(index), out=out, **json.loads(kwargs))


if __name__ == "__main__":
    _main(sys.argv[1:])

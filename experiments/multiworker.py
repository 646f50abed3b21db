"""Runs a study on a local MultiWorkerMirroredStrategy cluster.

    python -m experiments.multiworker --num_workers=2 noise_robustness \\
        --workdir=/tmp/runs --override=epochs=3

starts `num_workers` processes of `python -m experiments.<study>` on this
machine, each with its own `TF_CONFIG` (free localhost ports, CPU only) and
`--strategy=multiworker`, and waits for all of them. Worker 0 (the chief)
writes the results to `--workdir`; worker i > 0 writes the same files to
`<workdir>/worker<i>`, so that no two processes write one file. If a worker
fails, the others (which then wait in a collective op) are killed by PID.

On several machines, set `TF_CONFIG` on each yourself and run the study
with `--strategy=multiworker` there instead; see
`keras_sam.distribution` for what works under MultiWorkerMirroredStrategy.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_commands(study, flags, num_workers):
    """The command line of each worker (the chief's `--workdir` first)."""
    workdir = next(
        (f.split("=", 1)[1] for f in flags if f.startswith("--workdir=")),
        None,
    )
    if workdir is None:
        raise SystemExit("Pass --workdir=DIR to the study.")
    commands = []
    for index in range(num_workers):
        own = workdir if index == 0 else os.path.join(
            workdir, f"worker{index}")
        study_flags = [
            f for f in flags
            if not f.startswith(("--workdir=", "--strategy="))
        ]
        commands.append([
            sys.executable, "-m", f"experiments.{study}",
            f"--workdir={own}", "--strategy=multiworker", *study_flags,
        ])
    return commands


def launch(study, flags, num_workers=2, timeout=None):
    """Runs the workers; returns their exit codes (killed ones negative)."""
    from keras_sam.distribution import local_tf_configs

    configs = local_tf_configs(num_workers)
    processes = []
    try:
        for index, command in enumerate(
                worker_commands(study, flags, num_workers)):
            env = dict(os.environ, TF_CONFIG=configs[index],
                       CUDA_VISIBLE_DEVICES="")
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env))
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(p.poll() is None for p in processes):
            failed = any(p.poll() not in (None, 0) for p in processes)
            late = deadline is not None and time.monotonic() > deadline
            if failed or late:
                break
            time.sleep(0.5)
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, 9)  # SIGKILL, this worker only
                process.wait()
    return [p.returncode for p in processes]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before all workers are killed")
    parser.add_argument("study", help="e.g. noise_robustness, m_sharpness")
    args, flags = parser.parse_known_args(argv)
    codes = launch(args.study, flags, args.num_workers, args.timeout)
    if any(codes):
        raise SystemExit(f"workers exited with {codes}")


if __name__ == "__main__":
    main()

"""A study worker for the tests: ``python hpo_worker.py URL STUDY N_TRIALS work|hang``.

It shares the study through `jaxopt_ft.hpo` exactly as the ``hpo`` experiment does (stale-trial
failing, heartbeat, the trial budget), with a cheap objective instead of training, so a test
can start several at once or kill one in the middle of a trial. ``hang`` takes one trial and
waits inside it (printing ``running <number>``) until it is killed.
"""

import os
import sys
import time

from jaxopt_ft import hpo

SPACE = {"x": ("uniform", 0.0, 1.0)}


def main(url: str, name: str, n_trials: int, mode: str) -> None:
    storage = hpo.open_storage(url, heartbeat_s=1)
    study = hpo.open_study(
        storage,
        name,
        sampler=hpo.make_sampler("random", seed=os.getpid(), space=SPACE),
        pruner=hpo.make_pruner("none", min_resource=1, max_resource=1),
    )
    while (trial := hpo.next_trial(study, n_trials)) is not None:
        trial.set_user_attr("worker", os.getpid())
        x = hpo.suggest(trial, SPACE)["x"]
        with hpo.heartbeat(study, storage, [trial]):
            if mode == "hang":
                print(f"running {trial.number}", flush=True)
                time.sleep(600)
            time.sleep(0.2)
        study.tell(trial, 1.0 - (x - 0.3) ** 2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])

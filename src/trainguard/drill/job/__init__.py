"""The drill's training job: files *copied* into each scenario's directory and run there.

They are never imported as part of trainguard. The guard decides where time and
calls come from by the file they live in (the trainguard package is the guard's own
code, a file elsewhere is the user's), so the job must run from outside the package,
exactly like a real training script and the team's shared helper module would:

- ``train.py``: the entry point of one rank (a tiny transformer language model,
  DDP over gloo or NCCL, guarded with ``trainguard.watch``);
- ``team_utils.py``: the "shared helper module" of the incident, which the insider
  edited; every in-job sabotage of the drill lives here and is switched on by
  the drill through ``DRILL_SABOTAGE``;
- ``launch.py``: a small torchrun stand-in that starts the ranks and tears the job
  down when one of them fails (as torchrun does).
"""

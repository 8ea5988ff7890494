"""What happens when things go wrong: nothing of a run is lost, every mistake gets a clear message.

- :mod:`.resumable_data`: per-item augmentation seeds and the mid-epoch data position, so a
  resumed run sees exactly the batches an uninterrupted one would.
- :mod:`.preemption`: SIGTERM / SIGUSR1 save ``last.ckpt`` at the end of the step and stop; the
  run directory is keyed by the command, so the same command resumes (``ckpt_path: last``).
- :mod:`.divergence`: non-finite steps are skipped and counted; too many in a row stop the run
  with the last good checkpoint and the likely causes.
- :mod:`.checkpoint_io`: atomic checkpoint writes, ``weights_only=True`` reads.
- :mod:`.data_faults`: unreadable images fail with their path or are skipped and counted.
- :mod:`.config_checks` and :mod:`.errors`: unknown keys list the valid ones; the CLI prints one
  message and exits 1 instead of a traceback.
"""

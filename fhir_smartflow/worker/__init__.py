"""Run a queued event: claim, fetch, prior state, gaps and recovery, pipeline, executor, run history."""

"""Measuring the models: identification, detection, tagging and captioning evaluations with their reports,
and the plots they draw."""

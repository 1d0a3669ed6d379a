"""Retraining jobs: fine-tune a model on what the bot was taught, promote it only if it does not regress."""

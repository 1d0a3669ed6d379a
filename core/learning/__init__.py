"""Training models: the starter models `anibot models build` trains (starter) and the retraining jobs that
fine-tune on what the bot was taught and promote only without regression (retrain)."""

"""Pictures to train and evaluate on: seeded synthetic scenes with ground truth (synth), real face sets in
folders (real_faces, folders) and the detection scenes both build from them."""

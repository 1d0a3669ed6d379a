"""The starter models `anibot models build` trains offline (detector, embedder, tagger, captioner), saved in the
community formats the model slots load; `build` runs them and enrols the starter cast."""

"""Model slots: the interfaces (base), a loader per community format (detector, embedder, tagger, captioner), the
registry of installed and active models, and `anibot models pull` with its pinned catalogue."""

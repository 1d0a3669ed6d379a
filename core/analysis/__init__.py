"""The service on top: the analysis pipeline (detector -> gallery -> tagger -> captioner) and the service that
decodes, caches, runs, annotates and logs one analysis. Front-ends and workers call it; nothing in core imports it."""

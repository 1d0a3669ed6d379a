"""Tagging folders of pictures as dataset makers do: caption text from a tagger's scores (``captions``), implied
tags (``implications``), and the folder walker with its ledger of pictures done (``folders``, ``runner``)."""

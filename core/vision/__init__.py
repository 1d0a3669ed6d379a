"""Seeing one picture: safe decoding (intake), the model slots and their loaders, results, annotation and
fonts, the attributes and caption grounding. Above storage; knows nothing of characters, chats or jobs."""

"""Who is in the picture: the faiss gallery and its versions, kept reference crops, the starter cast,
teaching (adding and removing characters), users' corrections, and character names."""

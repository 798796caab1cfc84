"""Downloading source images: ``pixmo.download_pixmo`` fetches Pixmo images by URL, checked against their hashes."""

"""Weak labels: image-level labels -> CAM classifier -> pseudo pixel labels for the auxiliary decoders."""

"""Data files the operators read: class names, the AudioSet ontology, the audio-visual concept table."""

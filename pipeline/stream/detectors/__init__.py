"""The built-in signal detectors of one stream (silence, loud_onset, speech, scene_cut, motion_burst,
black and frozen video), behind one ``DetectorBank``. Part of ``stream``.
"""

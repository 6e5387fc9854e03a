"""The synthetic stand-in: procedural aerial ship imagery in Kaggle's layout (train/valid/test, one class
'ship'), deterministic from a seed. Each label is the axis-aligned bounds of a ship's visible hull pixels;
rocks, buoys, whitecaps, piers and debris are drawn but never labelled: look-alikes to reject.

    python -m harness.synthetic small|full   # what the harness runs when it needs the stand-in

draw.py holds the primitives and the Canvas a scene is drawn on; environment.py the sea, land, weather and
camera; ships.py one ship; placement.py where a scene's ships go; distractors.py the look-alikes; scene.py
one scene in order; write.py the files, the splits and the cache; mosaic.py a picture of samples.
"""

from harness.synthetic.mosaic import save_sample_mosaic
from harness.synthetic.scene import Scene, render_scene
from harness.synthetic.write import SYNTH_SCALES, generate_synthetic, make_synthetic, synthetic_dir

__all__ = ["SYNTH_SCALES", "Scene", "generate_synthetic", "make_synthetic", "render_scene",
           "save_sample_mosaic", "synthetic_dir"]

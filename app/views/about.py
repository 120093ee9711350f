"""About: what the numbers mean, in plain words."""

from __future__ import annotations

import streamlit as st

st.title("About mist")
st.markdown(
    """
**mist** measures how much a neural network "knows" about where the eyes, the nose and the
mouth corners are in a face picture, and shows it.

### The question
A network such as ResNet18 turns a picture into 512 numbers, its *representation*. We never
tell it about noses. Still, those numbers may say a lot about where the nose is, or nothing.
**Mutual information** (MI) measures how much: it is the number of *nats* by which knowing
the representation shrinks our uncertainty about the nose position.

* **0 nats**: the representation says nothing; the best guess is the average nose position.
* **1 nat**: the region where the nose probably is gets about e ≈ 2.7 times smaller.
* **3 nats**: about 20 times smaller. Bits are the same idea with 2 instead of e (1 nat ≈
  1.44 bits).

### How it is measured (DoE: difference of entropies)
Two small models are fitted to the training faces:

1. **q(landmark)**: where the nose tends to be, over all faces (the *marginal*);
2. **q(landmark | representation)**: where the nose is, given this face's numbers.

On faces they have never seen, the MI estimate is the average of
log q(landmark | representation) − log q(landmark): how much more probability the second
model gives the true position. Both models are normalising flows (flexible densities over
the 2-D image plane). Other estimators (CLUB, L1Out) are in the Train page's settings.

### The networks
* **Random init**: a ResNet18 with random weights, never trained: the baseline, what
  numbers carry when nothing was learned (near 0 nats in the built-in demo).
* **ImageNet-pretrained**: trained to recognise objects in photos (needs the weights file).
* **Fine-tuned**: the ImageNet network trained further here, *to help find landmarks*.
* **Trained from scratch**: the same, from random weights (works offline).

### The faces
Without any download, mist uses **drawn faces**: cartoon portraits generated on the fly,
with exactly known landmarks, framed like the CelebA dataset (178 x 218 pixels). With the
CelebA dataset on disk, the same measurements run on real photos.

### The pages
* **Train**: choose networks and landmarks, press Start, watch the MI grow.
* **Results**: every finished run in a table you can search, with your notes and tags;
  pick several to overlay their training curves and group their bars by landmark, see
  which settings differ, and look at one run in detail. The address bar keeps what you
  picked: copy it to share the same view.
* **Posteriors**: for one face, where each network thinks a landmark is: the regions
  holding 50% and 90% of the probability, and how many nats this one face gives.
* **Your photo**: the same on a photo of yours (it never leaves this computer).

### Runs that differ only by their seed
Training starts from random weights and sees the faces in a random order; the *seed*
fixes both. Two runs with the same settings but another seed give somewhat different
numbers, by luck alone. So on **Results**, runs whose settings differ only by their seed
are shown together as one entry: the **mean** of their estimates, and whiskers (or a band
around the curve) of **± one standard error** across the seeds, the spread of runs divided
by the square root of their number. A difference between two settings that is much smaller
than their error bars may be luck; *Repeat with 3 more seeds* on a finished run trains the
same settings again to find out.

The science follows the torch-mist tutorial notebook (DoE with flow densities on CelebA
landmarks); the library behind this page is `mist_core`, usable from Python and from the
command line (`python -m mist_core --help`).
"""
)

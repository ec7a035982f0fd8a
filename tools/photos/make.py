#!/usr/bin/env python3
"""Build assets/photos/photos.npz: real photographs as ImageNet-style model inputs.

Run once, by hand; never in CI (CI only reads the committed .npz). The images
come from two PyPI wheels, read straight from the wheel files (zip archives,
nothing is installed or imported from them):

* scikit-image 0.26.0: ``skimage/data/*`` (its bundled sample images)
* scikit-learn 1.9.1: ``sklearn/datasets/images/*`` (china.jpg, flower.jpg)

Every source image is checked against the SHA-256 recorded in ``SOURCES``
below, so a different wheel (another platform tag of the same release holds
the same data files) either gives the same inputs or stops with an error.
Each image's author and licence, as the packages state them, are in
``assets/photos/README.md``; only public-domain, CC0 and CC BY images are used.

Processing, per image (the usual ImageNet evaluation crop):

1. decode with Pillow; grey images are replicated to three channels (RGB);
2. resize so that the shorter side is 256 px (``Image.resize`` with
   ``Image.Resampling.BILINEAR``, which Pillow antialiases when shrinking),
   keeping the aspect ratio, sizes rounded to the nearest pixel;
3. crop the centred 224 x 224 square (offsets rounded down);
4. store HWC -> CHW as uint8.

Output: an ``.npz`` with one array, ``x``: uint8 [N, 3, 224, 224], NCHW, RGB,
raw 0..255 pixel values, in the order of ``SOURCES`` (colour photographs first,
then grey ones). The archive is written with fixed timestamps so that its bytes
depend only on the pixels.

Reproduce (see assets/photos/README.md for the recorded hashes):

    python3 -m venv /tmp/photos-venv
    /tmp/photos-venv/bin/pip install pillow==13.0.0 numpy==2.4.6
    pip download --no-deps -d /tmp/wheels scikit-image==0.26.0 scikit-learn==1.9.1
    /tmp/photos-venv/bin/python tools/photos/make.py \\
        --skimage /tmp/wheels/scikit_image-0.26.0-*.whl \\
        --sklearn /tmp/wheels/scikit_learn-1.9.1-*.whl \\
        --out assets/photos/photos.npz [--png /tmp/photos.png]
"""

import argparse
import hashlib
import io
import sys
import zipfile

import numpy as np
from PIL import Image

SHORT_SIDE = 256
CROP = 224

# (name, package, path inside the wheel, sha256 of that file)
SOURCES = [
    ("astronaut", "skimage", "skimage/data/astronaut.png",
     "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    ("chelsea", "skimage", "skimage/data/chelsea.png",
     "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    ("coffee", "skimage", "skimage/data/coffee.png",
     "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    ("rocket", "skimage", "skimage/data/rocket.jpg",
     "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    ("hubble_deep_field", "skimage", "skimage/data/hubble_deep_field.jpg",
     "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    ("retina", "skimage", "skimage/data/retina.jpg",
     "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
    ("china", "sklearn", "sklearn/datasets/images/china.jpg",
     "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    ("flower", "sklearn", "sklearn/datasets/images/flower.jpg",
     "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    ("camera", "skimage", "skimage/data/camera.png",
     "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    ("clock_motion", "skimage", "skimage/data/clock_motion.png",
     "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955"),
    ("brick", "skimage", "skimage/data/brick.png",
     "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
    ("grass", "skimage", "skimage/data/grass.png",
     "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
    ("gravel", "skimage", "skimage/data/gravel.png",
     "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
]


def read_member(wheel, path):
    """The bytes of `path` inside the wheel `wheel` (a zip file or an unpacked folder)."""
    if zipfile.is_zipfile(wheel):
        with zipfile.ZipFile(wheel) as z:
            return z.read(path)
    with open(f"{wheel}/{path}", "rb") as f:
        return f.read()


def to_input(data):
    """Decoded, resized (short side 256) and centre-cropped (224) uint8 CHW RGB."""
    img = Image.open(io.BytesIO(data))
    img.load()
    img = img.convert("RGB")  # grey (L) images: the same value in R, G and B
    w, h = img.size
    scale = SHORT_SIDE / min(w, h)
    size = (max(SHORT_SIDE, round(w * scale)), max(SHORT_SIDE, round(h * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - CROP) // 2, (size[1] - CROP) // 2
    img = img.crop((left, top, left + CROP, top + CROP))
    hwc = np.asarray(img, dtype=np.uint8)
    assert hwc.shape == (CROP, CROP, 3), hwc.shape
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def write_npz(path, arrays):
    """Like numpy.savez_compressed, but with fixed timestamps (same pixels, same bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue(), compresslevel=9)


def contact_sheet(x, path, columns=5):
    n = len(x)
    rows = (n + columns - 1) // columns
    sheet = np.full((rows * (CROP + 4), columns * (CROP + 4), 3), 255, np.uint8)
    for i, img in enumerate(x):
        r, c = divmod(i, columns)
        y0, x0 = r * (CROP + 4) + 2, c * (CROP + 4) + 2
        sheet[y0:y0 + CROP, x0:x0 + CROP] = img.transpose(1, 2, 0)
    Image.fromarray(sheet).save(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skimage", required=True, help="scikit-image 0.26.0 wheel (or unpacked folder)")
    p.add_argument("--sklearn", required=True, help="scikit-learn 1.9.1 wheel (or unpacked folder)")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--png", help="also write a contact sheet of the 224x224 crops")
    args = p.parse_args()
    wheels = {"skimage": args.skimage, "sklearn": args.sklearn}

    images = []
    for name, package, path, sha in SOURCES:
        data = read_member(wheels[package], path)
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            sys.exit(f"{path}: sha256 {got}, expected {sha} (another release of {package}?)")
        images.append(to_input(data))
        print(f"{len(images) - 1:2} {name:18} {path}")
    x = np.stack(images)
    write_npz(args.out, {"x": x})
    with open(args.out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"{args.out}: x uint8 {list(x.shape)}, sha256 {digest}")
    if args.png:
        contact_sheet(x, args.png)
        print(f"{args.png}: contact sheet")


if __name__ == "__main__":
    main()

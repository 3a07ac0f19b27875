"""The classes UCF-101 and VGGSound share, for the cross-modal classification task of CMG (Xia et al.,
NeurIPS 2023): a classifier trained on UCF-101 video is tested on VGGSound audio and the reverse, so
both manifests must name each shared class the same way. The shared name is VGGSound's label (it says
what is heard as well as seen: "playing acoustic guitar" for UCF-101's PlayingGuitar).

The paper uses 16 classes. Its code (github.com/haihuangcode/CMG, `UCF_VGGSOUND_datasets.py`) reads
them from two files, `UCF101sameVGGSound.txt` and `VGGSoundsameUCF101.txt`, one name a line, line i of
one paired with line i of the other (a class is its line's index in both); the files are not in the
repository, only in the authors' feature bundle. What the repository does hold are the open-set
follow-up's subsets of that task (ICCV25-OSCMG/data/UCF_VGG_OSCMG/{ucf2vggsound,vggsound2ucf}_12.csv):
the 10 pairs below appear in both, by name. Two more appear on one side only (UCF-101's FrisbeeCatch,
VGGSound's "bowling impact") and are left out rather than guessed at, so the built-in list has 10 of
the 16. With the authors' two files at the dataset's root, a converter uses them instead (all 16).
"""

from __future__ import annotations

from pathlib import Path

from .base import ConversionError, read_text

UCF_FILE = "UCF101sameVGGSound.txt"
VGGSOUND_FILE = "VGGSoundsameUCF101.txt"
PAIRS: tuple[tuple[str, str], ...] = (  # (UCF-101 class folder, VGGSound label)
    ("Basketball", "basketball bounce"),
    ("JumpRope", "rope skipping"),
    ("PlayingCello", "playing cello"),
    ("PlayingFlute", "playing flute"),
    ("PlayingGuitar", "playing acoustic guitar"),
    ("PlayingPiano", "playing piano"),
    ("PlayingSitar", "playing sitar"),
    ("Skiing", "skiing"),
    ("TableTennisShot", "playing table tennis"),
    ("Typing", "typing on typewriter"),
)


def shared_pairs(root: Path) -> tuple[tuple[str, str], ...]:
    """(UCF-101 class, VGGSound label) pairs: the authors' two files in `root` when both are there,
    else PAIRS. One file without the other is refused: it would pair nothing."""
    present = [(root / name).is_file() for name in (UCF_FILE, VGGSOUND_FILE)]
    if not any(present):
        return PAIRS
    if not all(present):
        have, lack = (UCF_FILE, VGGSOUND_FILE) if present[0] else (VGGSOUND_FILE, UCF_FILE)
        raise ConversionError(f"found {root / have} but not {root / lack}: CMG's shared classes pair line i of"
                              " one with line i of the other; put both there, or neither for the built-in 10")
    ucf, vggsound = (_names(root / name) for name in (UCF_FILE, VGGSOUND_FILE))
    if len(ucf) != len(vggsound):
        raise ConversionError(f"{root / UCF_FILE} names {len(ucf)} classes and {root / VGGSOUND_FILE} {len(vggsound)};"
                              " line i of one pairs with line i of the other, so they must hold as many")
    return tuple(zip(ucf, vggsound))


def _names(path: Path) -> list[str]:
    return [line.strip() for line in read_text(path, "a list of CMG's shared classes").splitlines() if line.strip()]

"""State-dict names and shapes of the GAN networks stay those of checkpoints already written (and of the public
weights' converter): tests/data/state_dict_shapes_paper_cifar10.json was generated from the code at c67d26a for
ddgan, wavediff and wavediff-wg at the papers' CIFAR-10 configuration; speed changes must keep every key and shape."""
import json
from pathlib import Path

import pytest

from bench import registry

REFERENCE = json.loads((Path(__file__).parent / "data" / "state_dict_shapes_paper_cifar10.json").read_text())


@pytest.mark.parametrize("variant", sorted(REFERENCE))
def test_state_dict_names_and_shapes_unchanged(variant):
    cfg = registry.resolve({"variant": variant, "dataset": "cifar10", "scale": "paper"}, check_paths=False)
    system = registry.build(cfg)
    for name, net in (("generator", system.G), ("discriminator", system.D)):
        got = {k: list(t.shape) for k, t in net.state_dict().items()}
        want = REFERENCE[variant][name]
        assert sorted(set(want) - set(got)) == [], f"{variant} {name}: keys gone"
        assert sorted(set(got) - set(want)) == [], f"{variant} {name}: keys added"
        assert {k: got[k] for k in want if got[k] != want[k]} == {}, f"{variant} {name}: shapes changed"

"""How much of a held-out wording's object the text embedding alone reveals (issue #12).

The generator sees a prompt only through its text embedding. This probe asks the question without any 3D:
fit classifiers from the embeddings of the generator's training wordings (``prompts.wordings`` of the shipped
config) to their object, then score them on the held-out wording split (``att3d eval --split wording``).
Their accuracy bounds what any map from this embedding can do on that split without knowledge from elsewhere
(a generator that places the right object must at least tell the objects apart): shape and colour are scored
separately, and the wrongly read prompts are listed.

    python scripts/probe_text_separability.py [--wordings 40] [--show 20] [--json OUT.json]

Classifiers: nearest canonical prompt, nearest training wording (cosine), a linear map, and an MLP with the
shape of the generator's mapping network plus a wider hidden layer (384 -> 256 -> 16 -> objects).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor, nn


def embed(encoder, prompts: list[str]) -> Tensor:
    return torch.cat([encoder.encode(prompts[i : i + 256]) for i in range(0, len(prompts), 256)])


def fit(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordings", type=int, default=40, help="training wordings per object (shipped: 40)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--show", type=int, default=20, help="misread prompts to list (linear classifier)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from att3d.shapes.eval_cases import split_cases
    from att3d.shapes.language import training_wordings
    from att3d.shapes.splits import load_splits
    from att3d.text import MiniLMEncoder

    torch.manual_seed(0)
    splits = load_splits()
    objects = list(splits.train)
    train = [
        (t, i)
        for i, obj in enumerate(objects)
        for t in training_wordings(obj, args.wordings, 0, splits.wording)
    ]
    test = [(case.prompt, objects.index(case.obj)) for case in split_cases("wording")]
    encoder = MiniLMEncoder()
    x_train, x_test = embed(encoder, [t for t, _ in train]), embed(encoder, [t for t, _ in test])
    x_canonical = embed(encoder, [obj.canonical_prompt for obj in objects])
    y_train = torch.tensor([i for _, i in train])
    y_test = torch.tensor([i for _, i in test])
    n = len(objects)

    predictions: dict[str, Tensor] = {
        "nearest canonical prompt": (x_test @ x_canonical.T).argmax(1),
        "nearest training wording": y_train[(x_test @ x_train.T).argmax(1)],
    }
    models = {
        "linear": (nn.Linear(384, n), 1e-2),
        "MLP 384-256-16": (
            nn.Sequential(nn.Linear(384, 256), nn.SiLU(), nn.Linear(256, 16), nn.SiLU(), nn.Linear(16, n)),
            3e-3,
        ),
    }
    for name, (model, lr) in models.items():
        fitted = fit(model, x_train, y_train, args.steps, lr)
        with torch.no_grad():
            predictions[name] = fitted(x_test).argmax(1)

    rows = []
    print(f"{len(train)} training wordings of {n} objects; {len(test)} held-out wording cases")
    print(f"{'classifier':28s} {'object':>7s} {'shape':>7s} {'colour':>7s}")
    for name, predicted in predictions.items():
        pairs = list(zip(predicted.tolist(), y_test.tolist(), strict=True))
        row = {
            "classifier": name,
            "object": sum(p == t for p, t in pairs) / len(pairs),
            "shape": sum(objects[p].shape == objects[t].shape for p, t in pairs) / len(pairs),
            "colour": sum(objects[p].color == objects[t].color for p, t in pairs) / len(pairs),
        }
        rows.append(row)
        print(f"{name:28s} {row['object']:7.3f} {row['shape']:7.3f} {row['colour']:7.3f}")
    misread = [
        (prompt, objects[p].canonical_prompt)
        for (prompt, t), p in zip(test, predictions["linear"].tolist(), strict=True)
        if p != t
    ]
    print(f"\nmisread by the linear classifier ({len(misread)}; first {args.show}):")
    for prompt, read_as in misread[: args.show]:
        print(f"  {prompt!r:50s} -> {read_as}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "misread_linear": misread}, indent=2) + "\n")


if __name__ == "__main__":
    main()

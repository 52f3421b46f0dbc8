"""Writes examples/digits_logits.csv: held-out logits of a logistic regression on sklearn's digits.

Deterministic (fixed split and solver), so rerunning it rewrites the same file. Logits are
written with repr, so reading them back gives the same float64. Needs scikit-learn:
``pip install -e '.[test]'``, then ``python examples/make_digits_logits.py``.
"""

import csv
import pathlib

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

OUTPUT = pathlib.Path(__file__).with_name("digits_logits.csv")


def main() -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    model = LogisticRegression(max_iter=2000, C=0.1, random_state=0).fit(x_train, y_train)
    z = model.decision_function(x_test)  # multinomial: softmax(z) is predict_proba
    with open(OUTPUT, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow([f"z{c}" for c in range(z.shape[1])] + ["label"])
        for row, label in zip(z.tolist(), y_test.tolist()):
            writer.writerow([repr(v) for v in row] + [label])
    print(f"wrote {len(y_test)} samples to {OUTPUT}")


if __name__ == "__main__":
    main()

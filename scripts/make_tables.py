#!/usr/bin/env python3
"""Generated tables for the `table` dataset (numpy only; Parquet copies when pyarrow is there).

  tutorial   x_{train,val}.npy (N x 784) with y1_*.npy, y2_*.npy: two 10-way classification
             tasks, each the argmax of its own random projection of x (the tutorial's
             model.fit(x_train, [y_train1, y_train2]) example).
  synthetic  The MMoE paper's synthetic benchmark (Ma et al., KDD 2018, section 4): two
             regression tasks whose label correlation is set by --rho. x ~ N(0, I_d);
             w1 = c u1, w2 = c (rho u1 + sqrt(1 - rho^2) u2) for orthonormal u1, u2;
             y_i = w_i.x + sum_j sin(alpha_j w_i.x + beta_j) + eps, eps ~ N(0, 0.01).
             Written as train.npz / val.npz with columns x (N x d), y1, y2.
  ctr        Impressions with numeric and categorical columns (some missing), a click label
             and a conversion label that is 1 only on clicked rows (the ESMM setting):
             train.csv, val.csv (and .parquet with pyarrow).
  impressions  A CTR-like table at benchmark scale (needs pyarrow): train.parquet and
             val.parquet (--rows / 10 rows) with 13 numeric columns n0..n12 (heavy-tailed
             counts and prices, four with missing values), 8 categorical columns c0..c7 of
             int64 ids (Zipf-distributed; cardinalities 4 to 200,000; c3 with missing values)
             and two binary tasks, click and like, whose logits share a latent score (label
             correlation set by --rho).

Usage: python scripts/make_tables.py {tutorial,synthetic,ctr,impressions} OUT_DIR [--rows N] [--seed S] [--rho R]
"""
import argparse
import os

import numpy as np


def tutorial(out, rows, seed):
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(784, 10)), rng.normal(size=(784, 10))
    for split, n in (("train", rows), ("val", max(rows // 5, 10))):
        x = rng.random((n, 784), dtype=np.float32)
        centred = x - 0.5
        np.save(os.path.join(out, f"x_{split}.npy"), x)
        np.save(os.path.join(out, f"y1_{split}.npy"), (centred @ w1).argmax(1).astype(np.int64))
        np.save(os.path.join(out, f"y2_{split}.npy"), (centred @ w2).argmax(1).astype(np.int64))


def synthetic(out, rows, seed, rho, d=100, c=1.0, m=10):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(d, 2)))
    u1, u2 = u[:, 0], u[:, 1]
    w1 = c * u1
    w2 = c * (rho * u1 + np.sqrt(1 - rho**2) * u2)
    alpha, beta = rng.normal(size=m), rng.normal(size=m)

    def label(w, x):
        s = x @ w
        return s + np.sin(np.outer(s, alpha) + beta).sum(1) + rng.normal(0, 0.1, size=len(x))

    for split, n in (("train", rows), ("val", max(rows // 5, 10))):
        x = rng.normal(size=(n, d)).astype(np.float32)
        y1, y2 = label(w1, x).astype(np.float32), label(w2, x).astype(np.float32)
        np.savez(os.path.join(out, f"{split}.npz"), x=x, y1=y1, y2=y2)


def ctr(out, rows, seed):
    rng = np.random.default_rng(seed)
    cities = np.array([f"city{i}" for i in range(30)])
    for split, n in (("train", rows), ("val", max(rows // 4, 20))):
        age = rng.integers(18, 80, n).astype(float)
        price = np.round(rng.lognormal(3, 1, n), 3)
        city = rng.zipf(1.5, n) % 30
        device = rng.integers(0, 3, n)
        logit_click = -1.0 + 0.8 * (device == 1) - 0.02 * (age - 40) + 0.3 * np.sin(city)
        click = (rng.random(n) < 1 / (1 + np.exp(-logit_click))).astype(int)
        logit_conv = -0.5 - 0.5 * np.log(price) + 0.6 * (device == 2) + 0.03 * (age - 40)
        conv = click * (rng.random(n) < 1 / (1 + np.exp(-logit_conv)))
        price_text = np.where(rng.random(n) < 0.05, "", np.char.mod("%.3f", price))
        lines = ["age,price,city,device,click,conv"]
        lines += [f"{a:.0f},{p},{cities[c]},{dv},{k},{v}" for a, p, c, dv, k, v in zip(age, price_text, city, device, click, conv)]
        with open(os.path.join(out, f"{split}.csv"), "w") as f:
            f.write("\n".join(lines) + "\n")
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            continue
        missing = price_text == ""
        table = pa.table({
            "age": age, "price": pa.array(np.where(missing, np.nan, price), mask=missing),
            "city": cities[city], "device": device, "click": click, "conv": conv,
        })
        pq.write_table(table, os.path.join(out, f"{split}.parquet"), row_group_size=max(n // 3, 1))


# impressions: each categorical column's cardinality and Zipf exponent.
IMPRESSION_CATEGORIES = [(4, 2.0), (12, 1.8), (60, 1.6), (300, 1.4), (2000, 1.3), (10000, 1.2), (50000, 1.15), (200000, 1.1)]


def impressions(out, rows, seed, rho):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    # Per-id effects on the two latent scores (shared by both splits, as a real ad system's are).
    effects = [(rng.normal(0, 0.5, card), rng.normal(0, 0.5, card)) for card, _ in IMPRESSION_CATEGORIES]
    w1, w2 = rng.normal(0, 0.4, 13), rng.normal(0, 0.4, 13)
    for split, n in (("train", rows), ("val", max(rows // 10, 20))):
        cols, z = {}, np.empty((n, 13))
        for j in range(13):
            # Counts (Criteo's I1..I13 are counts), lognormal prices and a few uniform scores.
            v = (rng.poisson(rng.gamma(1 + j % 3, 3.0, n)).astype(float) if j < 7
                 else np.round(rng.lognormal(2 + j % 2, 1, n), 2) if j < 10 else rng.random(n))
            z[:, j] = (np.log1p(v) - np.log1p(v).mean()) / (np.log1p(v).std() + 1e-9)
            missing = rng.random(n) < (0.2 if j in (2, 5) else 0.05 if j in (8, 11) else 0.0)
            cols[f"n{j}"] = pa.array(np.where(missing, np.nan, v), mask=missing)
        s1, s2 = z @ w1, z @ w2
        for k, (card, a) in enumerate(IMPRESSION_CATEGORIES):
            ids = (rng.zipf(a, n) - 1) % card
            # Ids are scrambled so that frequency does not follow the id.
            ids = (ids * 2654435761 + k) % card
            s1, s2 = s1 + effects[k][0][ids], s2 + effects[k][1][ids]
            missing = rng.random(n) < 0.1 if k == 3 else np.zeros(n, bool)
            cols[f"c{k}"] = pa.array(ids.astype(np.int64), mask=missing)
        latent = s2 / (s2.std() + 1e-9)
        s1 = s1 / (s1.std() + 1e-9)
        p_click = 1 / (1 + np.exp(-(-1.5 + s1)))
        p_like = 1 / (1 + np.exp(-(-2.0 + rho * s1 + np.sqrt(1 - rho**2) * latent)))
        cols["click"] = (rng.random(n) < p_click).astype(np.int64)
        cols["like"] = (rng.random(n) < p_like).astype(np.int64)
        pq.write_table(pa.table(cols), os.path.join(out, f"{split}.parquet"), row_group_size=1 << 17)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["tutorial", "synthetic", "ctr", "impressions"])
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rho", type=float, default=0.5)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.kind == "tutorial":
        tutorial(a.out, a.rows, a.seed)
    elif a.kind == "synthetic":
        synthetic(a.out, a.rows, a.seed, a.rho)
    elif a.kind == "impressions":
        impressions(a.out, a.rows, a.seed, a.rho)
    else:
        ctr(a.out, a.rows, a.seed)


if __name__ == "__main__":
    main()

//! The gradient methods against an independent numpy implementation.
//!
//! `tests/balance_reference.py` (numpy only, its own algorithms: see its docstring) prints the
//! expected weights and directions of every deterministic gradient method for fixed 3-task
//! gradient matrices: a conflicting case, a near-parallel one (cosine 0.9999, condition
//! number ~6e4) and one with gradient norms 100× apart. This test runs it with the project's
//! `.venv/bin/python` and compares the Rust library functions on the same inputs.
//!
//! Tolerance: `1e-8` relative to the largest entry of each vector, for every method. Both
//! sides solve every problem to machine precision (the iterative solvers too: Nash-MTL's
//! Newton, the active-set QPs of MGDA and UPGrad, CAGrad's bisection all end on an exact
//! KKT point), so the differences are rounding amplified by the conditioning: the largest
//! seen is ~1e-11 (Aligned-MTL, near-parallel case). The margin allows for other LAPACK builds
//! behind numpy.
use mtl::balance::aligned::aligned_mtl;
use mtl::balance::cagrad::cagrad;
use mtl::balance::dbmtl::DbMtl;
use mtl::balance::gradvac::GradVac;
use mtl::balance::imtl::imtl;
use mtl::balance::mgda::{mgda, MgdaNormalization};
use mtl::balance::nash::nash_mtl;
use mtl::balance::pcgrad::pcgrad;
use mtl::balance::upgrad::upgrad;
use mtl::balance::Combination;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use tch::Tensor;

const TOLERANCE: f64 = 1e-8;

fn reference() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it creates .venv with numpy) before this test",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("tests/balance_reference.py"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(out.status.success(), "balance_reference.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("balance_reference.py printed invalid JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("a JSON array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn matrix(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = v.as_array().expect("rows").iter().map(floats).collect();
    let p = rows[0].len() as i64;
    Tensor::from_slice(&rows.concat()).reshape([rows.len() as i64, p])
}

fn orders(v: &Value) -> Vec<Vec<usize>> {
    v.as_array().expect("orders").iter().map(|o| floats(o).iter().map(|x| *x as usize).collect()).collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.reshape([-1])).unwrap()
}

/// Largest deviation relative to the largest expected entry.
fn rel_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(f64::MIN_POSITIVE, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn gradient_methods_match_the_numpy_reference() {
    let reference = reference();
    let cases = reference["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let g = matrix(&case["grads"]);
        let g2 = matrix(&case["second_grads"]);
        let losses = Tensor::from_slice(&floats(&case["losses"]));
        let (natural, shuffled) = (orders(&case["orders"]["natural"]), orders(&case["orders"]["shuffled"]));
        let gradvac_two_steps = {
            let mut gv = GradVac::new(3, 0.5);
            gv.combine(&g, &shuffled).unwrap();
            gv.combine(&g, &natural).unwrap()
        };
        let dbmtl = |steps: usize| {
            let mut db = DbMtl::new(3, 0.9);
            let first = db.combine(&g, &losses).unwrap();
            if steps == 1 {
                first
            } else {
                db.combine(&g2, &(&losses * 0.9)).unwrap()
            }
        };
        let ours: Vec<(&str, Combination)> = vec![
            ("mgda", mgda(&g, &losses, MgdaNormalization::None).unwrap()),
            ("mgda_l2", mgda(&g, &losses, MgdaNormalization::L2).unwrap()),
            ("mgda_loss_l2", mgda(&g, &losses, MgdaNormalization::LossL2).unwrap()),
            ("pcgrad_natural", pcgrad(&g, &natural).unwrap()),
            ("pcgrad_shuffled", pcgrad(&g, &shuffled).unwrap()),
            ("cagrad", cagrad(&g, 0.5).unwrap()),
            ("imtl", imtl(&g).unwrap()),
            ("nash", nash_mtl(&g).unwrap()),
            ("aligned", aligned_mtl(&g).unwrap()),
            ("upgrad", upgrad(&g, 1e-4).unwrap()),
            ("gradvac_two_steps", gradvac_two_steps),
            ("dbmtl_one_step", dbmtl(1)),
            ("dbmtl_two_steps", dbmtl(2)),
        ];
        let expected = case["results"].as_object().expect("results");
        assert_eq!(expected.len(), ours.len(), "{name}: the reference has other methods");
        for (method, comb) in &ours {
            let want = &expected.get(*method).unwrap_or_else(|| panic!("{name}: no reference for {method}"));
            for field in ["weights", "direction"] {
                let got = values(if field == "weights" { &comb.weights } else { &comb.direction });
                let err = rel_error(&got, &floats(&want[field]));
                println!("{name:>14} {method:>18} {field:>9}: relative error {err:.1e}");
                compared += 1;
                if err.is_nan() || err > TOLERANCE {
                    failures.push(format!(
                        "{name} {method} {field}: {got:?} vs {:?} (error {err:.1e})",
                        floats(&want[field])
                    ));
                }
            }
        }
    }
    assert_eq!(compared, 3 * 13 * 2);
    assert!(failures.is_empty(), "differences from the reference:\n{}", failures.join("\n"));
}

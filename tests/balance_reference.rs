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

/// Runs `tests/<script>` with the project's `.venv/bin/python` and parses the JSON it prints.
fn python_json(script: &str, args: &[&str]) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it creates .venv with numpy and scipy) before this test",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("tests").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script} printed invalid JSON: {e}"))
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
    let reference = python_json("balance_reference.py", &[]);
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

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The convex methods against a general-purpose solver: `tests/balance_optimum.py` poses each
/// method's problem as its paper does (MGDA's and CAGrad's primal in parameter space, UPGrad's
/// projections onto the dual cone, Nash-MTL's barrier problem, IMTL-G's linear system) and
/// solves it with scipy, on random Jacobians of every hard shape (more tasks than parameters,
/// near-duplicate rows, rows 1e6 apart, `[a, b, −k(a+b)]`) for three seeds. Where the optimum
/// is unique our direction must have a cosine ≥ 0.9999 to scipy's; where it is zero ours must
/// be below `ZERO_DIRECTION` times the smallest gradient's norm.
#[test]
fn convex_methods_reach_an_independent_solvers_optimum() {
    /// The bar every convex method must clear (the solvers agree far more closely: see the printout).
    const MIN_COSINE: f64 = 0.9999;
    /// A zero optimum: the Gram matrix carries the gradients to about √ε_f64 of the largest
    /// norm, so "zero" is measured at 1e-6 of the smallest gradient.
    const ZERO_DIRECTION: f64 = 1e-6;
    // Other Jacobians: BALANCE_OPTIMUM_SEEDS="3 4 5" cargo test --release --test balance_reference
    let seeds = std::env::var("BALANCE_OPTIMUM_SEEDS").unwrap_or_else(|_| "0 1 2".into());
    let reference = python_json("balance_optimum.py", &seeds.split_whitespace().collect::<Vec<_>>());
    let cases = reference["cases"].as_array().expect("cases");
    let alpha = reference["cagrad_alpha"].as_f64().unwrap();
    let reg = reference["upgrad_reg"].as_f64().unwrap();
    let mut failures = Vec::new();
    let mut worst: std::collections::BTreeMap<&str, (f64, usize, usize, usize)> = Default::default();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let g = matrix(&case["grads"]);
        let t = g.size()[0] as usize;
        let smallest = (0..t).map(|i| norm(&values(&g.get(i as i64)))).fold(f64::INFINITY, f64::min);
        let ones = Tensor::ones([t as i64], (tch::Kind::Double, tch::Device::Cpu));
        let ours = [
            ("mgda", mgda(&g, &ones, MgdaNormalization::None).unwrap()),
            ("cagrad", cagrad(&g, alpha).unwrap()),
            ("upgrad", upgrad(&g, reg).unwrap()),
            ("nash", nash_mtl(&g).unwrap()),
            ("imtl", imtl(&g).unwrap()),
        ];
        for (method, comb) in &ours {
            let want = &case["results"][*method];
            let got = values(&comb.direction);
            let entry = worst.entry(method).or_insert((1.0, 0, 0, 0));
            if want["zero"].as_bool() == Some(true) {
                entry.2 += 1;
                let rel = norm(&got) / smallest;
                if rel > ZERO_DIRECTION {
                    failures.push(format!(
                        "{name} {method}: optimum 0, ours {got:?} (|d| = {rel:.1e} of the smallest |g|)"
                    ));
                }
            } else if want["direction"].is_null() {
                entry.3 += 1;
            } else {
                entry.1 += 1;
                let want = floats(&want["direction"]);
                let cos = got.iter().zip(&want).map(|(a, b)| a * b).sum::<f64>() / (norm(&got) * norm(&want));
                entry.0 = entry.0.min(if cos.is_nan() { -1.0 } else { cos });
                if cos.is_nan() || cos < MIN_COSINE {
                    failures.push(format!("{name} {method}: cosine {cos:.6} (ours {got:?}, optimum {want:?})"));
                }
            }
        }
    }
    for (method, (cos, compared, zero, ambiguous)) in &worst {
        println!(
            "{method:>7}: {compared} directions, worst 1 - cosine {:.1e}; {zero} zero optima; {ambiguous} not unique",
            1.0 - cos
        );
        assert!(
            2 * compared >= cases.len(),
            "{method}: only {compared} of {} cases with a unique non-zero optimum",
            cases.len()
        );
    }
    assert!(
        failures.is_empty(),
        "{} disagreements with the independent optimum:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

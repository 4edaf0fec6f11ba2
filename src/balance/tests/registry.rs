//! `build`: names and option validation; `state` / `load_state`: an exact round trip through
//! a safetensors file for every stateful method.
use super::training::{build, TinyModel};
use super::*;
use crate::balance::{build_for, method_names};
use crate::error::is_user_error;

#[test]
fn every_method_builds_by_name() {
    for method in method_names() {
        let b = build(method, "{}").unwrap();
        assert_eq!(b.name(), method);
    }
}

#[test]
fn bad_names_and_options_are_user_errors_naming_the_key() {
    let cases = [
        ("sgd", "{}", "balance.method:"),
        ("cagrad", "{options: {bogus: 1}}", "balance.options.bogus:"),
        ("ew", "{on: representation}", "balance.on:"),
        ("famo", "{on: representation}", "balance.on:"),
        ("mgda", "{options: {on: representation}}", "balance.options.on:"),
        ("static", "{options: {weight: 2}}", "balance.options.weight:"),
        ("cagrad", "{options: {alpha: 1.5}}", "balance.options.alpha:"),
        ("cagrad", "{options: {alpha: high}}", "balance.options.alpha:"),
        ("nash", "{options: {update_every: 0}}", "balance.options.update_every:"),
        ("nash", "{options: {update_every: 1.5}}", "balance.options.update_every:"),
        ("mgda", "{options: {normalization: l3}}", "balance.options.normalization:"),
        ("dwa", "{options: {temperature: -1}}", "balance.options.temperature:"),
        ("famo", "{options: {weight_decay: -0.1}}", "balance.options.weight_decay:"),
        ("dbmtl", "{options: {beta: 1}}", "balance.options.beta:"),
        ("gradvac", "{options: {alpha: 0.5}}", "balance.options.alpha:"),
        ("upgrad", "{options: {reg_eps: -1}}", "balance.options.reg_eps:"),
    ];
    for (method, options, prefix) in cases {
        let err = match build(method, options) {
            Ok(_) => panic!("{method} {options} was accepted"),
            Err(e) => e,
        };
        assert!(is_user_error(&err), "{method} {options}: {err:#}");
        let msg = err.to_string();
        assert!(msg.starts_with(prefix) && !msg.contains('\n'), "{method} {options}: {msg}");
    }
    for (method, options) in [
        ("mgda", "{on: representation, options: {normalization: loss+l2}}"),
        ("nash", "{options: {update_every: 5}}"),
        ("famo", "{options: {lr: 0.01, weight_decay: 0}}"),
        ("gradnorm", "{on: params, options: {alpha: 0.5, lr: 0.01}}"),
        ("upgrad", "{options: {reg_eps: 0}}"),
        ("ew", "{on: params}"),
    ] {
        build(method, options).unwrap();
    }
}

/// Saves and reloads tensors through a safetensors file, as the checkpoint does.
fn through_file(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    let named: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (n, t.contiguous())).collect();
    Tensor::write_safetensors(&named, &path).unwrap();
    Tensor::read_safetensors(&path).unwrap()
}

#[test]
fn state_round_trip_resumes_exactly() {
    let stateful = [
        ("uncertainty", "{}"),
        ("dwa", "{}"),
        ("famo", "{}"),
        ("gradvac", "{}"),
        ("gradvac", "{on: representation}"),
        ("dbmtl", "{}"),
        ("dbmtl", "{on: representation}"),
        ("gradnorm", "{}"),
        ("nash", "{options: {update_every: 2}}"),
        ("rlw", "{}"),
        ("pcgrad", "{}"),
    ];
    for (method, options) in stateful {
        let model = TinyModel::new(4);
        let mut a = build(method, options).unwrap();
        // Fresh state round-trips too (DB-MTL's empty EMA, GradNorm without initial losses).
        build(method, options).unwrap().load_state(&through_file(a.state())).unwrap();
        for step in 0..3 {
            let _ = model.backward(a.as_mut(), step);
            if a.needs_after_step() {
                let after = tch::no_grad(|| model.forward(false).losses);
                a.after_step(&after).unwrap();
            }
            a.end_epoch(step, &[1.0 + step as f64, 2.0 / (1.0 + step as f64)]);
            model.sgd(0.05);
        }
        let mut b = build(method, options).unwrap();
        b.load_state(&through_file(a.state())).unwrap();
        for step in 3..5 {
            let (wa, _) = model.backward(a.as_mut(), step);
            let ga = model.grads();
            let (wb, _) = model.backward(b.as_mut(), step);
            assert_eq!(values(&wa), values(&wb), "{method} {options} step {step}");
            assert_eq!(ga, model.grads(), "{method} {options} step {step}");
            if a.needs_after_step() {
                let after = tch::no_grad(|| model.forward(false).losses);
                a.after_step(&after).unwrap();
                b.after_step(&after).unwrap();
            }
        }
        let (sa, sb) = (a.state(), b.state());
        assert_eq!(sa.len(), sb.len());
        for ((na, ta), (nb, tb)) in sa.iter().zip(&sb) {
            assert_eq!(na, nb);
            assert!(ta.to_device(tch::Device::Cpu).equal(&tb.to_device(tch::Device::Cpu)), "{method}: {na} differs");
        }
    }
}

#[test]
fn state_of_another_shape_is_a_user_error() {
    let three = build_for(&super::training::config("famo", "{}"), 3).unwrap();
    let mut two = build("famo", "{}").unwrap();
    let err = two.load_state(&three.state()).unwrap_err();
    assert!(is_user_error(&err) && err.to_string().contains("logits"), "{err}");
    let err = two.load_state(&[]).unwrap_err();
    assert!(is_user_error(&err) && err.to_string().contains("missing"), "{err}");
}

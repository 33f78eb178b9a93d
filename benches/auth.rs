//! The cost authentication adds to every request: finding a token among the configured ones
//! (a SHA-256 and a constant-time compare per entry), with a handful and with many tokens.
//!
//! `cargo bench --bench auth`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kasuhara_guard::auth::{self, Access, Role, TokenStore};

/// A store of `n` supervisor tokens; returns it with the last token minted (the worst case
/// for an early-exit search, which the constant-time loop does not have anyway).
fn store(n: usize) -> (TokenStore, String) {
    let mut toml = String::new();
    let mut last = String::new();
    for i in 0..n {
        last = auth::mint_token().expect("random source");
        toml.push_str(&auth::token_entry_toml(
            &format!("t{i}"),
            &last,
            Role::Supervisor,
            &[format!("tenant-{i}")],
        ));
    }
    (TokenStore::parse(&toml).expect("minted entries parse"), last)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("authenticate");
    for n in [5, 100, 1000] {
        let (store, token) = store(n);
        let access = Access::tokens(store);
        // Assert the answer before timing, so a broken lookup cannot look fast.
        let principal = access.principal(Some(&token)).expect("valid").expect("present");
        assert_eq!(principal.name, format!("t{}", n - 1));
        assert!(access.principal(Some("kg_wrong")).is_err());
        group.bench_function(BenchmarkId::new("tokens", n), |b| {
            b.iter(|| access.principal(black_box(Some(token.as_str()))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

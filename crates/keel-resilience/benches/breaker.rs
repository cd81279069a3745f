//! Cost of the circuit breaker per call: `cargo bench -p keel-resilience --bench breaker`.
//!
//! The number that matters is `closed/count_window`: what every call pays when the
//! dependency is healthy (acquire a permit, report a success). Target: under 100 ns.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_resilience::{CircuitBreaker, Config, Window};

const ELAPSED: Duration = Duration::from_millis(3);

fn breaker(window: Window) -> CircuitBreaker {
    let config = Config {
        window,
        ..Config::default()
    };
    CircuitBreaker::new("bench", config).expect("valid config")
}

fn closed(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed");
    let count = breaker(Window::Count(100));
    group.bench_function("count_window", |b| {
        b.iter(|| {
            let permit = black_box(&count).try_acquire().expect("closed");
            permit.success(black_box(ELAPSED));
        })
    });
    let time = breaker(Window::Time(Duration::from_secs(10)));
    group.bench_function("time_window", |b| {
        b.iter(|| {
            let permit = black_box(&time).try_acquire().expect("closed");
            permit.success(black_box(ELAPSED));
        })
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    let open = breaker(Window::Count(100));
    open.force_open();
    c.bench_function("open/rejected", |b| {
        b.iter(|| black_box(black_box(&open).try_acquire().is_err()))
    });
}

criterion_group!(benches, closed, open);
criterion_main!(benches);

//! `amqp-perftest`: see `amqp-perftest --help`.

#![forbid(unsafe_code)]

use amqp_perftest::idle::{IdleEvent, idle};
use amqp_perftest::{Cli, Command, Progress, sink};
use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

// mimalloc: the system allocator's malloc and free were 11% of the tool's
// samples under load (perf, persistent 1 KiB with 4 producers).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Sink(s)) => run_sink(&s),
        Some(Command::Idle(a)) => run_idle(&a),
        None => run_test(cli.run),
    }
}

fn run_sink(s: &amqp_perftest::SinkArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("amqp-perftest sink: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let listener = match sink::bind(&s.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("amqp-perftest sink: {e}");
                return ExitCode::from(1);
            }
        };
        eprintln!(
            "amqp-perftest sink: listening on {} ({}); Ctrl-C stops",
            s.listen,
            if s.loopback {
                "loopback: publishes go to the consumers of their queues".to_owned()
            } else {
                format!("flooding consumers with {} B bodies", s.body_size)
            }
        );
        let cfg = sink::SinkConfig {
            body_size: s.body_size,
            loopback: s.loopback,
        };
        tokio::select! {
            _ = sink::serve(listener, cfg) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        ExitCode::SUCCESS
    })
}

fn run_idle(a: &amqp_perftest::IdleArgs) -> ExitCode {
    if let Err(e) = a.validate() {
        eprintln!("amqp-perftest idle: {e}");
        return ExitCode::from(1);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("amqp-perftest idle: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
            stop_tx.send_replace(true);
        });
        let report = |e: IdleEvent| match e {
            IdleEvent::Connected(n, t) => {
                let mut out = std::io::stdout();
                let _ = writeln!(out, "connected {n} in {:.2} s", t.as_secs_f64());
                let _ = out.flush();
            }
            IdleEvent::Failed(e) => eprintln!("amqp-perftest idle: {e}"),
        };
        match idle(a, stop_rx, report).await {
            Ok(n) => {
                eprintln!("amqp-perftest idle: closed {n} connections");
                ExitCode::SUCCESS
            }
            Err(_) => ExitCode::from(1),
        }
    })
}

fn run_test(args: amqp_perftest::RunArgs) -> ExitCode {
    let json = args.json;
    let progress = if args.quiet {
        amqp_perftest::Progress::Off
    } else if json {
        Progress::Stderr
    } else {
        Progress::Stdout
    };
    let summary = amqp_perftest::run(args, progress);
    for line in summary.lines() {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    if json {
        println!("{}", summary.to_json());
    }
    if let Some(e) = &summary.error {
        eprintln!("amqp-perftest: error: {e}");
    } else if !summary.counts_exact() {
        eprintln!(
            "amqp-perftest: the counts are not exact (see the counts line): messages or confirms were lost"
        );
    }
    ExitCode::from(summary.exit_code())
}

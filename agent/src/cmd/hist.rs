//! `kspan hist` and `kspan top`: live latency histograms from the kernel's maps (no
//! per-event transfer).
use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use clap::Args;

use super::{ctrlc_flag, parse_duration, FilterArgs, HistError, TopArgs, TopBy};
use crate::{
    capture::{Capture, FuncLosses, SyscallHook},
    hist::{fmt_ns, fmt_opt_ns, rows, Comms, Row, Snapshot, SortBy, View},
    uprobe::FuncSpec,
};

#[derive(Debug, Args, Clone)]
pub struct HistArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// What to show [default: syscall, or function with --func].
    #[arg(long, value_enum)]
    pub view: Option<View>,
    /// Measure functions of programs instead of syscalls: FILE:SYMBOL, comma-separated or
    /// repeated. FILE is a path, or a library or program name looked up in the usual
    /// directories (libc.so.6); SYMBOL a name (demangled C++ and Rust names too) or a glob
    /// ('SSL_read*'; at most 64 functions in all, since the kernel takes ~0.2 s to remove
    /// each function's probes at exit).
    #[arg(long, value_delimiter = ',')]
    pub func: Vec<FuncSpec>,
    /// Refresh interval (e.g. 1s, 500ms).
    #[arg(long, value_parser = parse_duration, default_value = "1s", allow_hyphen_values = true)]
    pub interval: Duration,
    /// Stop after this many refreshes (default: until interrupted or `q`).
    #[arg(long)]
    pub count: Option<u64>,
    /// Show totals since start instead of each interval.
    #[arg(long)]
    pub cumulative: bool,
    /// Text blocks even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// One JSON document per interval (buckets as [lower_ns, upper_ns, count]).
    #[arg(long, conflicts_with = "plain")]
    pub json: bool,
    /// Histograms printed per interval in text mode.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Row order.
    #[arg(long, value_enum, default_value = "time")]
    pub sort: SortBy,
}

/// How output is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Json,
    Plain,
    Interactive,
}

struct Opts {
    view: View,
    funcs: Vec<FuncSpec>,
    interval: Duration,
    count: Option<u64>,
    cumulative: bool,
    mode: Mode,
    top: usize,
    sort: SortBy,
    table_only: bool,
}

pub fn run_hist(a: HistArgs) -> Result<(), HistError> {
    let mode = pick_mode(a.json, a.plain);
    let view = match (a.view, a.func.is_empty()) {
        (None, true) => View::Syscall,
        (None, false) => View::Function,
        (Some(v @ (View::Function | View::Process)), false) => v,
        (Some(View::Function), true) => return Err(HistError::FuncView),
        (Some(v), true) => v,
        (Some(_), false) => return Err(HistError::FuncView),
    };
    run(
        &a.filter,
        Opts {
            view,
            funcs: a.func,
            interval: a.interval,
            count: a.count,
            cumulative: a.cumulative,
            mode,
            top: a.top,
            sort: a.sort,
            table_only: false,
        },
    )
}

pub fn run_top(a: TopArgs) -> Result<(), HistError> {
    if a.by == TopBy::Route {
        return super::routes::run(&a);
    }
    let mode = pick_mode(a.json, a.plain);
    let view = match (a.by, a.func.is_empty()) {
        (TopBy::Process | TopBy::Route, _) => View::Process,
        (TopBy::Function, false) => View::Function,
        (TopBy::Syscall, true) => View::Syscall,
        (TopBy::Function, true) | (TopBy::Syscall, false) => return Err(HistError::FuncView),
    };
    run(
        &a.filter,
        Opts {
            view,
            funcs: a.func,
            interval: a.interval,
            count: a.count,
            cumulative: false,
            mode,
            top: a.top,
            sort: a.sort,
            table_only: true,
        },
    )
}

fn pick_mode(json: bool, plain: bool) -> Mode {
    if json {
        Mode::Json
    } else if plain || !std::io::stdout().is_terminal() {
        Mode::Plain
    } else {
        Mode::Interactive
    }
}

fn start(filter: &FilterArgs, o: &Opts) -> Result<Capture, HistError> {
    if o.interval.is_zero() {
        return Err(HistError::Interval);
    }
    let mut cc = filter.capture_config()?;
    // Histograms only: nothing goes through the ring buffer.
    cc.emit_syscalls = false;
    cc.emit_failed = false;
    cc.emit_tcp = false;
    cc.ring_buffer_bytes = 4096;
    // Per-process histograms cost a hash update per call: only when they can be shown.
    cc.proc_hist = o.view == View::Process || o.mode == Mode::Interactive;
    if o.funcs.is_empty() {
        cc.syscall_hook = SyscallHook::RawTracepoint;
        cc.tcp = true;
    } else {
        // Functions alone: no syscall or TCP programs.
        cc.funcs = crate::uprobe::find(&o.funcs)?;
        cc.syscall_hook = SyscallHook::Off;
        cc.tcp = false;
        for f in &cc.funcs {
            let aliases = if f.aliases.is_empty() {
                String::new()
            } else {
                format!(" (also named {})", f.aliases.join(", "))
            };
            eprintln!("kspan: probing {} in {}{aliases}", f.name, f.path.display());
        }
    }
    Ok(Capture::start(cc)?)
}

/// Successive reads of the kernel's histograms, for the text and the full-screen views.
#[derive(Default)]
struct Reads {
    prev: Snapshot,
    /// Process names seen so far.
    comms: Comms,
}

impl Reads {
    /// What to show now: the change since the last read, or everything with `cumulative`.
    fn next(
        &mut self,
        capture: &Capture,
        per_process: bool,
        cumulative: bool,
    ) -> Result<Snapshot, HistError> {
        let cur = Snapshot::read(capture, per_process)?;
        self.comms.learn(&cur);
        let shown = if cumulative {
            cur.clone()
        } else {
            cur.since(&self.prev)
        };
        self.prev = cur;
        Ok(shown)
    }
}

fn run(filter: &FilterArgs, o: Opts) -> Result<(), HistError> {
    let capture = start(filter, &o)?;
    if o.mode == Mode::Interactive {
        let r = interactive(&capture, o);
        removal_note(&capture);
        return r;
    }
    let stop = ctrlc_flag().map_err(HistError::Terminal)?;
    let mut reads = Reads::default();
    let mut n = 0u64;
    let mut reported_full = 0u64;
    let mut reported_losses = FuncLosses::default();
    let mut out = std::io::stdout().lock();
    eprintln!("kspan: measuring (histograms in the kernel); stop with Ctrl-C");
    loop {
        let t0 = Instant::now();
        let mut stopping = false;
        while t0.elapsed() < o.interval {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                stopping = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20).min(o.interval));
        }
        let shown = reads.next(&capture, o.view == View::Process, o.cumulative)?;
        let rs = rows(&shown, o.view, o.sort, &reads.comms, &capture.config.funcs);
        // Calls the per-process map could not hold: never lost silently.
        let uncounted = capture.proc_hist_full();
        if uncounted > reported_full {
            eprintln!(
                "kspan: per-process histograms full: {uncounted} calls not counted per process \
                 since start (the per-syscall view counts them)"
            );
            reported_full = uncounted;
        }
        let losses = (!o.funcs.is_empty()).then(|| capture.func_losses());
        if let Some(l) = losses.filter(|l| *l != reported_losses) {
            eprintln!(
                "kspan: function calls not timed since start: {} nested deeper than {} open \
                 calls per thread, {} left without a return (longjmp, exception, thread exit), \
                 {} on threads the table had no room for",
                l.too_deep,
                agent_common::FUNC_STACK_DEPTH,
                l.unfinished,
                l.table_full
            );
            reported_losses = l;
        }
        let text = match o.mode {
            Mode::Json => json_doc(&o, &rs, uncounted, losses),
            _ if o.table_only => table_text(&o, &rs),
            _ => hist_text(&o, &rs),
        };
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(HistError::Output)?;
        n += 1;
        // A stop ends with what happened up to it: the last document is never stale (a
        // refresh that fell behind on a busy host used to leave the last counts out).
        if stopping || o.count.is_some_and(|c| n >= c) {
            removal_note(&capture);
            return Ok(());
        }
    }
}

/// Says why exiting takes a while with many function probes (see `capture::attach_funcs`).
fn removal_note(capture: &Capture) {
    let n = capture.config.funcs.len();
    if n >= 8 {
        eprintln!(
            "kspan: removing the probes of {n} functions (about {:.0} s: the kernel removes \
             each probe after a grace period)",
            n as f64 * 0.22
        );
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn view_name(v: View) -> &'static str {
    match v {
        View::Syscall => "syscall",
        View::Process => "process",
        View::Connect => "connect",
        View::Accept => "accept",
        View::Function => "function",
    }
}

fn json_doc(o: &Opts, rs: &[Row], proc_hist_full: u64, losses: Option<FuncLosses>) -> String {
    let mut doc = serde_json::json!({
        "time": now_rfc3339(),
        "interval_s": o.interval.as_secs_f64(),
        "cumulative": o.cumulative,
        "view": view_name(o.view),
        "rows": rs,
        // Calls since start that the per-process histograms could not count (map full).
        "proc_hist_full": proc_hist_full,
    });
    // Probed calls since start the kernel counted but could not time.
    if let Some(l) = losses {
        doc["func_losses"] = serde_json::json!(l);
    }
    format!("{doc}\n")
}

fn summary_line(r: &Row) -> String {
    format!(
        "count {}  errors {}  total ~{}  p50 {}  p90 {}  p99 {}  max < {}",
        r.count,
        r.errors,
        fmt_ns(r.total_ns_est),
        fmt_opt_ns(r.p50_ns),
        fmt_opt_ns(r.p90_ns),
        fmt_opt_ns(r.p99_ns),
        fmt_opt_ns(r.max_ns)
    )
}

fn hist_text(o: &Opts, rs: &[Row]) -> String {
    let mut s = format!(
        "[{}] {} latency, {} (top {} by {:?})\n",
        now_rfc3339(),
        view_name(o.view),
        if o.cumulative {
            "since start".to_string()
        } else {
            format!("last {}", humantime::format_duration(o.interval))
        },
        o.top,
        o.sort
    );
    if rs.iter().all(|r| r.count == 0) {
        s.push_str("     (no calls)\n\n");
        return s;
    }
    for r in rs.iter().filter(|r| r.count > 0).take(o.top) {
        s.push_str(&format!("\n{}: {}\n", r.label, summary_line(r)));
        s.push_str(&r.hist.render(40));
    }
    s.push('\n');
    s
}

fn table_text(o: &Opts, rs: &[Row]) -> String {
    let (what, column) = match (o.view, o.funcs.is_empty()) {
        (View::Process, true) => ("processes", "PID COMM"),
        (View::Process, false) => ("processes' functions", "PID COMM FUNCTION"),
        (View::Function, _) => ("functions", "FUNCTION"),
        _ => ("syscalls", "SYSCALL"),
    };
    let mut s = format!(
        "[{}] {what} by {:?}, last {}\n{:<28} {:>10} {:>8} {:>10} {:>9} {:>9} {:>9}\n",
        now_rfc3339(),
        o.sort,
        humantime::format_duration(o.interval),
        column,
        "COUNT",
        "ERRORS",
        "TOTAL",
        "P50",
        "P99",
        "MAX<"
    );
    for r in rs.iter().filter(|r| r.count > 0).take(o.top) {
        s.push_str(&format!(
            "{:<28} {:>10} {:>8} {:>10} {:>9} {:>9} {:>9}\n",
            r.label.chars().take(28).collect::<String>(),
            r.count,
            r.errors,
            fmt_ns(r.total_ns_est),
            fmt_opt_ns(r.p50_ns),
            fmt_opt_ns(r.p99_ns),
            fmt_opt_ns(r.max_ns)
        ));
    }
    s.push('\n');
    s
}

/// The full-screen view: a sortable table and the selected row's histogram.
fn interactive(capture: &Capture, mut o: Opts) -> Result<(), HistError> {
    use ratatui::{
        crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        layout::{Constraint, Layout},
        style::{Modifier, Style},
        text::Line,
        widgets::{Block, Borders, Cell, Paragraph, Row as TRow, Table, TableState},
    };

    let mut terminal = ratatui::try_init().map_err(HistError::Terminal)?;
    let result = (|| -> Result<(), HistError> {
        let mut reads = Reads::default();
        let mut shown_rows: Vec<Row> = Vec::new();
        let mut state = TableState::default().with_selected(Some(0));
        let mut paused = false;
        let mut next = Instant::now();
        let mut n = 0u64;
        loop {
            if !paused && Instant::now() >= next {
                // Per-process histograms always: the view can switch to them.
                let shown = reads.next(capture, true, o.cumulative)?;
                shown_rows = rows(&shown, o.view, o.sort, &reads.comms, &capture.config.funcs);
                next = Instant::now() + o.interval;
                n += 1;
                if o.count.is_some_and(|c| n > c) {
                    return Ok(());
                }
            }
            let sel = state
                .selected()
                .unwrap_or(0)
                .min(shown_rows.len().saturating_sub(1));
            state.select(Some(sel));
            terminal
                .draw(|f| {
                    let [head, table, hist, help] = Layout::vertical([
                        Constraint::Length(1),
                        Constraint::Percentage(45),
                        Constraint::Min(5),
                        Constraint::Length(1),
                    ])
                    .areas(f.area());
                    f.render_widget(
                        Paragraph::new(format!(
                            "kspan {} view, {}, sorted by {:?}{}",
                            view_name(o.view),
                            if o.cumulative {
                                "since start".to_string()
                            } else {
                                format!("every {}", humantime::format_duration(o.interval))
                            },
                            o.sort,
                            if paused { "  [paused]" } else { "" }
                        )),
                        head,
                    );
                    let trows: Vec<TRow> = shown_rows
                        .iter()
                        .map(|r| {
                            TRow::new(vec![
                                Cell::from(r.label.clone()),
                                Cell::from(r.count.to_string()),
                                Cell::from(r.errors.to_string()),
                                Cell::from(fmt_ns(r.total_ns_est)),
                                Cell::from(fmt_opt_ns(r.p50_ns)),
                                Cell::from(fmt_opt_ns(r.p99_ns)),
                                Cell::from(fmt_opt_ns(r.max_ns)),
                            ])
                        })
                        .collect();
                    let t = Table::new(
                        trows,
                        [
                            Constraint::Min(20),
                            Constraint::Length(10),
                            Constraint::Length(8),
                            Constraint::Length(10),
                            Constraint::Length(9),
                            Constraint::Length(9),
                            Constraint::Length(9),
                        ],
                    )
                    .header(
                        TRow::new(vec![
                            "NAME", "COUNT", "ERRORS", "TOTAL", "P50", "P99", "MAX<",
                        ])
                        .style(Style::default().add_modifier(Modifier::BOLD)),
                    )
                    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
                    .block(Block::default().borders(Borders::ALL).title("table"));
                    f.render_stateful_widget(t, table, &mut state);
                    let text = match shown_rows.get(sel) {
                        Some(r) => {
                            format!("{}: {}\n{}", r.label, summary_line(r), r.hist.render(30))
                        }
                        None => "(no calls yet)".to_string(),
                    };
                    f.render_widget(
                        Paragraph::new(text)
                            .block(Block::default().borders(Borders::ALL).title("histogram")),
                        hist,
                    );
                    f.render_widget(
                        Line::from(
                            "q quit  up/down select  s sort  v view  c cumulative  space pause",
                        ),
                        help,
                    );
                })
                .map_err(HistError::Terminal)?;
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            if event::poll(wait).map_err(HistError::Terminal)? {
                match event::read().map_err(HistError::Terminal)? {
                    Event::Key(k) if k.kind == KeyEventKind::Press => match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                            return Ok(())
                        }
                        KeyCode::Down | KeyCode::Char('j') => state.select(Some(sel + 1)),
                        KeyCode::Up | KeyCode::Char('k') => {
                            state.select(Some(sel.saturating_sub(1)))
                        }
                        KeyCode::Char('s') => {
                            o.sort = o.sort.next();
                            next = Instant::now();
                        }
                        KeyCode::Char('v') => {
                            o.view = o.view.next(!o.funcs.is_empty());
                            next = Instant::now();
                        }
                        KeyCode::Char('c') => {
                            o.cumulative = !o.cumulative;
                            next = Instant::now();
                        }
                        KeyCode::Char(' ') => paused = !paused,
                        _ => {}
                    },
                    // Resizes are redrawn on the next pass.
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    result
}

//! Transparent huge pages for a process's large allocations, asked for the only way a process
//! can for memory glibc's allocator maps: by starting again with a tunable set.

/// The glibc tunable that makes the allocator ask for transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`) for the memory it maps.
pub const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// A node's ledger is gigabytes of records and id indexes, touched at start-up and then read
/// at random: on 4 KiB pages nearly every lookup also misses the TLB, and every page is a
/// fault to touch. Where transparent huge pages are left to `madvise` (the usual default),
/// glibc's allocator asks for them when its `glibc.malloc.hugetlb=1` tunable is set, and a
/// tunable is read only as a process starts: so `tally start` (and `tally replay` with
/// `TALLY_HUGE_PAGES=on`, and `tally-bench engine`, which measures the node's business logic as
/// it runs) executes itself again, once, with it added to `GLIBC_TUNABLES`
/// (docs/design.md §4). Nothing happens when the tunable is already there (set, or after the
/// re-execution), or off Linux. Returns why the re-execution failed (the process then goes on
/// without it); it does not return when it succeeds.
pub fn reexecute_with_huge_pages() -> Option<std::io::Error> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables
        .split(':')
        .any(|tunable| tunable.starts_with("glibc.malloc.hugetlb="))
    {
        return None;
    }
    let tunables = if tunables.is_empty() {
        HUGE_PAGES_TUNABLE.to_owned()
    } else {
        format!("{tunables}:{HUGE_PAGES_TUNABLE}")
    };
    let executable = match std::env::current_exe() {
        Ok(executable) => executable,
        Err(error) => return Some(error),
    };
    let mut arguments = std::env::args_os();
    let mut command = std::process::Command::new(executable);
    if let Some(name) = arguments.next() {
        std::os::unix::process::CommandExt::arg0(&mut command, name);
    }
    command.args(arguments).env("GLIBC_TUNABLES", tunables);
    Some(std::os::unix::process::CommandExt::exec(&mut command))
}

/// Whether this process runs with the tunable (set by `reexecute_with_huge_pages`, or by whoever
/// started it).
pub fn huge_pages_tunable_set() -> bool {
    std::env::var("GLIBC_TUNABLES").is_ok_and(|tunables| {
        tunables
            .split(':')
            .any(|tunable| tunable == HUGE_PAGES_TUNABLE)
    })
}

/// What `TALLY_HUGE_PAGES` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePagesSetting {
    On,
    Off,
    /// Unset: the command's default (on for `tally start` and `tally-bench engine`).
    Default,
}

/// `TALLY_HUGE_PAGES`: `on`, `off`, or unset. Any other value counts as unset, with a warning on
/// standard error, given once: not again by the process `reexecute_with_huge_pages` starts.
pub fn setting() -> HugePagesSetting {
    let value = std::env::var_os("TALLY_HUGE_PAGES");
    match parse_setting(value.as_deref()) {
        Ok(setting) => setting,
        Err(warning) => {
            if !huge_pages_tunable_set() {
                eprintln!("warning: {warning}");
            }
            HugePagesSetting::Default
        }
    }
}

fn parse_setting(value: Option<&std::ffi::OsStr>) -> Result<HugePagesSetting, String> {
    match value.map(|value| value.to_str()) {
        None => Ok(HugePagesSetting::Default),
        Some(Some("on")) => Ok(HugePagesSetting::On),
        Some(Some("off")) => Ok(HugePagesSetting::Off),
        Some(other) => Err(format!(
            "TALLY_HUGE_PAGES={:?} is neither \"on\" nor \"off\"; the command's default is used",
            other.unwrap_or("(not UTF-8)")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn on_off_and_unset_are_settings_and_anything_else_a_warning() {
        assert_eq!(parse_setting(None), Ok(HugePagesSetting::Default));
        assert_eq!(
            parse_setting(Some(OsStr::new("on"))),
            Ok(HugePagesSetting::On)
        );
        assert_eq!(
            parse_setting(Some(OsStr::new("off"))),
            Ok(HugePagesSetting::Off)
        );
        let warning = parse_setting(Some(OsStr::new("of"))).expect_err("a typo");
        assert!(warning.contains("TALLY_HUGE_PAGES=\"of\""), "{warning}");
        assert!(parse_setting(Some(OsStr::new("ON"))).is_err());
    }
}

//! Filtered pages of jobs, served from the job index (`Table::JobIndex`) instead of a scan of
//! every job. Every index entry ends in its job id, so each filter part that names exact keys
//! (a label value or a set of them, a target, paused, an id prefix) is a stream of ids in id
//! order; the streams are intersected by leapfrogging (each seeks to the largest id another
//! one has reached), and the jobs they agree on are read and checked against the whole filter.
//! A page stops after `budget` rows read, with the ids so far and a cursor that has moved past
//! everything it ruled out.

use std::collections::HashMap;
use std::ops::Bound;

use super::command::{Job, Run, RunStatus, UnixMs};
use super::filter::{JobFilter, JobState, Requirement};
use super::records::{
    decode_run_list, label_prefix, status_key, status_key_parts, status_prefix, target_prefix,
    StateFault, Table, PAUSED_PREFIX,
};
use super::view::{prefix_end, Read, Row, View};

/// A page of jobs in id order; `next` is the `after` of the next page (None: nothing follows).
#[derive(Debug)]
pub struct JobsPage {
    pub jobs: Vec<Job>,
    pub next: Option<String>,
}

type Rows = Box<dyn Iterator<Item = Result<Row, StateFault>> + Send>;

/// Ids in id order from one range of one table: index entries under `key_prefix` (the id
/// follows it), or job records whose id starts with `id_prefix`.
struct Cursor {
    table: Table,
    key_prefix: Vec<u8>,
    id_prefix: String,
    /// The open range and the id it last gave.
    at: Option<(Rows, String)>,
    done: bool,
}

/// The id at the end of a row's key.
fn id_in(key_prefix: &[u8], key: &[u8]) -> String {
    String::from_utf8_lossy(key.get(key_prefix.len()..).unwrap_or_default()).into_owned()
}

/// How far a cursor walks its open range before it seeks anew.
const WALK_MAX: usize = 8;

impl Cursor {
    fn index(key_prefix: Vec<u8>) -> Cursor {
        Cursor::new(Table::JobIndex, key_prefix, String::new())
    }

    fn new(table: Table, key_prefix: Vec<u8>, id_prefix: String) -> Cursor {
        Cursor {
            table,
            key_prefix,
            id_prefix,
            at: None,
            done: false,
        }
    }

    /// Past its last id, for good.
    fn exhausted(&mut self) -> Option<String> {
        self.done = true;
        self.at = None;
        None
    }

    /// The first id at or after `from` (strictly after when `exclusive`); None when there is
    /// none. Each row read or range opened counts one step.
    fn seek<R: Read>(
        &mut self,
        read: &R,
        from: Option<&str>,
        exclusive: bool,
        steps: &mut usize,
    ) -> Result<Option<String>, StateFault> {
        let reached = |id: &str| match from {
            None => true,
            Some(f) if exclusive => id > f,
            Some(f) => id >= f,
        };
        if self.done {
            return Ok(None);
        }
        if let Some((rows, last)) = &mut self.at {
            if reached(last) {
                return Ok(Some(last.clone()));
            }
            for _ in 0..WALK_MAX {
                *steps += 1;
                match rows.next() {
                    None => return Ok(self.exhausted()),
                    Some(row) => {
                        let id = id_in(&self.key_prefix, &row?.0);
                        if reached(&id) {
                            *last = id.clone();
                            return Ok(Some(id));
                        }
                        *last = id;
                    }
                }
            }
        }
        // Seek: open the range anew at `from`.
        *steps += 1;
        let mut start = self.key_prefix.clone();
        let from = from.filter(|f| *f >= self.id_prefix.as_str());
        let lower = match from {
            Some(f) => {
                start.extend_from_slice(f.as_bytes());
                if exclusive {
                    Bound::Excluded(start)
                } else {
                    Bound::Included(start)
                }
            }
            None => {
                start.extend_from_slice(self.id_prefix.as_bytes());
                Bound::Included(start)
            }
        };
        let mut end = self.key_prefix.clone();
        end.extend_from_slice(self.id_prefix.as_bytes());
        let upper = prefix_end(&end);
        // A start past the end (an id after every one with the prefix) is an empty range.
        let past_end = match (&lower, &upper) {
            (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
            _ => false,
        };
        if past_end {
            return Ok(self.exhausted());
        }
        let mut rows = read.range(self.table, lower, upper, false);
        match rows.next() {
            None => Ok(self.exhausted()),
            Some(row) => {
                let id = id_in(&self.key_prefix, &row?.0);
                self.at = Some((rows, id.clone()));
                Ok(Some(id))
            }
        }
    }
}

/// One filter part as a stream of ids: the union of its cursors (a set of label values).
struct Driver(Vec<Cursor>);

impl Driver {
    fn seek<R: Read>(
        &mut self,
        read: &R,
        from: Option<&str>,
        exclusive: bool,
        steps: &mut usize,
    ) -> Result<Option<String>, StateFault> {
        let mut least: Option<String> = None;
        for c in &mut self.0 {
            if let Some(id) = c.seek(read, from, exclusive, steps)? {
                if least.as_ref().is_none_or(|l| id < *l) {
                    least = Some(id);
                }
            }
        }
        Ok(least)
    }
}

/// The streams that serve `filter`, the most selective kinds first; a scan of the job records
/// (within the id prefix, if any) when no part names exact keys.
fn drivers(filter: &JobFilter) -> Vec<Driver> {
    let mut drivers = Vec::new();
    for r in &filter.selector {
        if let Requirement::In(key, values) = r {
            let cursors = values
                .iter()
                .map(|v| Cursor::index(label_prefix(key, Some(v))))
                .collect();
            drivers.push(Driver(cursors));
        }
    }
    if let Some(t) = &filter.target {
        drivers.push(Driver(vec![Cursor::index(target_prefix(t))]));
    }
    if filter.state == Some(JobState::Paused) {
        drivers.push(Driver(vec![Cursor::index(PAUSED_PREFIX.to_vec())]));
    }
    if drivers.is_empty() || filter.prefix.is_some() {
        let prefix = filter.prefix.clone().unwrap_or_default();
        drivers.push(Driver(vec![Cursor::new(Table::Jobs, Vec::new(), prefix)]));
    }
    drivers
}

impl<R: Read> View<R> {
    /// Up to `limit` jobs matching `filter` with ids after `after`, in id order, reading at most
    /// about `budget` rows.
    pub fn list_jobs_filtered(
        &self,
        filter: &JobFilter,
        after: Option<&str>,
        limit: usize,
        budget: usize,
    ) -> Result<JobsPage, StateFault> {
        let mut drivers = drivers(filter);
        let mut steps = 0;
        let mut jobs: Vec<Job> = Vec::new();
        // Every id up to this one is ruled out or listed.
        let mut passed: Option<String> = after.map(str::to_owned);
        // Out of budget only once the page has moved on: a selector of many value sets costs
        // more than a budget per round, and a `next` equal to `after` would never end.
        let spent = |steps: usize, passed: &Option<String>| {
            steps >= budget
                && passed
                    .as_deref()
                    .is_some_and(|p| after.is_none_or(|a| p > a))
        };
        let out_of_budget =
            |jobs: Vec<Job>, passed: Option<String>| JobsPage { next: passed, jobs };
        loop {
            if spent(steps, &passed) {
                return Ok(out_of_budget(jobs, passed));
            }
            // The least id every driver has.
            let Some(mut x) = drivers[0].seek(&self.read, passed.as_deref(), true, &mut steps)?
            else {
                return Ok(JobsPage { jobs, next: None });
            };
            let mut agreed = 1;
            let mut i = 1 % drivers.len();
            while agreed < drivers.len() {
                let Some(y) = drivers[i].seek(&self.read, Some(&x), false, &mut steps)? else {
                    return Ok(JobsPage { jobs, next: None });
                };
                if y == x {
                    agreed += 1;
                } else {
                    // `x` is not in driver i: ruled out, and so is every id before `y`.
                    passed = Some(x);
                    x = y;
                    agreed = 1;
                }
                i = (i + 1) % drivers.len();
                if spent(steps, &passed) {
                    return Ok(out_of_budget(jobs, passed));
                }
            }
            steps += 1;
            let job = match self.read.get(Table::Jobs, x.as_bytes())? {
                Some(bytes) => Some(self.job(&bytes)?),
                None => None,
            };
            if let Some(job) = job.filter(|j| filter.matches(j)) {
                if jobs.len() == limit {
                    let next = jobs.last().map(|j| j.id.clone());
                    return Ok(JobsPage { jobs, next });
                }
                jobs.push(job);
            }
            passed = Some(x);
        }
    }
}

/// Which runs `GET /v1/runs` lists: one status (or one job's runs of any status), due between
/// `since` and `until` (inclusive), of jobs matching `jobs` (selector and target only).
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub job_id: Option<String>,
    pub jobs: JobFilter,
    pub since_ms: Option<UnixMs>,
    pub until_ms: Option<UnixMs>,
}

/// Where a page of runs ends: runs are listed newest due first, and this is the last one
/// listed or ruled out. As text: `{due_ms}:{run_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCursor {
    pub due_ms: UnixMs,
    pub run_id: String,
}

impl RunCursor {
    pub fn parse(text: &str) -> Option<RunCursor> {
        let (due, id) = text.split_once(':')?;
        Some(RunCursor {
            due_ms: due.parse().ok()?,
            run_id: id.to_owned(),
        })
    }

    fn of(run: &Run) -> RunCursor {
        RunCursor {
            due_ms: run.scheduled_at_ms,
            run_id: run.id.clone(),
        }
    }
}

impl std::fmt::Display for RunCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.due_ms, self.run_id)
    }
}

/// A page of runs, newest due first; `next` is the `after` of the next page.
#[derive(Debug)]
pub struct RunsPage {
    pub runs: Vec<Run>,
    pub next: Option<RunCursor>,
}

impl<R: Read> View<R> {
    /// Up to `limit` runs matching `filter` listed after `after`, newest due first, reading at
    /// most about `budget` rows.
    pub fn list_runs_filtered(
        &self,
        filter: &RunFilter,
        after: Option<&RunCursor>,
        limit: usize,
        budget: usize,
    ) -> Result<RunsPage, StateFault> {
        let since = filter.since_ms.unwrap_or(UnixMs::MIN);
        let until = filter.until_ms.unwrap_or(UnixMs::MAX);
        // (due, run id), newest first, within the time bounds and before the cursor.
        let before =
            |due: UnixMs, id: &str| after.is_none_or(|c| (due, id) < (c.due_ms, c.run_id.as_str()));
        let candidates: Box<dyn Iterator<Item = Result<(UnixMs, String), StateFault>>> =
            match (&filter.job_id, filter.status) {
                (Some(job_id), _) => {
                    let list = match self.read.get(Table::JobRuns, job_id.as_bytes())? {
                        Some(bytes) => decode_run_list(&bytes)?,
                        None => Vec::new(),
                    };
                    Box::new(list.into_iter().rev().map(Ok))
                }
                (None, status) => {
                    let status = status.unwrap_or(RunStatus::Failed);
                    let key = |due: UnixMs, id: &str| status_key(status, due, id);
                    let lower = Bound::Included(key(since, ""));
                    let mut upper = match until.checked_add(1) {
                        Some(u) => Bound::Excluded(key(u, "")),
                        None => prefix_end(&status_prefix(status)),
                    };
                    if let Some(c) = after {
                        let at = key(c.due_ms, &c.run_id);
                        let tighter = match &upper {
                            Bound::Excluded(u) => at < *u,
                            _ => true,
                        };
                        if tighter {
                            upper = Bound::Excluded(at);
                        }
                    }
                    let rows = self.read.range(Table::ByStatus, lower, upper, true);
                    Box::new(rows.map(|row| Ok(status_key_parts(&row?.0))))
                }
            };
        let mut jobs: HashMap<String, Option<Job>> = HashMap::new();
        let (mut runs, mut steps, mut passed) = (Vec::new(), 0, None);
        for candidate in candidates {
            let (due, id) = candidate?;
            // One job's run list is in memory: what lies outside the page costs no read.
            if !before(due, &id) || due < since || due > until {
                continue;
            }
            if steps >= budget {
                return Ok(RunsPage { runs, next: passed });
            }
            steps += 1;
            let cursor = RunCursor {
                due_ms: due,
                run_id: id,
            };
            let run = self.get_run(&cursor.run_id)?;
            passed = Some(cursor);
            let Some(run) = run else {
                continue;
            };
            if filter.status.is_some_and(|s| s != run.status) {
                continue;
            }
            if !filter.jobs.is_empty() {
                if !jobs.contains_key(&run.job_id) {
                    steps += 1;
                    jobs.insert(run.job_id.clone(), self.get_job(&run.job_id)?);
                }
                let matches = jobs[&run.job_id]
                    .as_ref()
                    .is_some_and(|j| filter.jobs.matches(j));
                if !matches {
                    continue;
                }
            }
            if runs.len() == limit {
                let next = runs.last().map(RunCursor::of);
                return Ok(RunsPage { runs, next });
            }
            runs.push(run);
        }
        Ok(RunsPage { runs, next: None })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::filter::parse_selector;
    use crate::core::mem::MemTables;
    use crate::core::records::{job_index_keys, Tables};
    use crate::core::state::tests::spec;
    use crate::core::{command::JobExt, JobSpec};

    fn job(id: &str, url: &str, labels: &[(&str, &str)], paused: bool) -> Job {
        let mut spec: JobSpec = spec(url);
        spec.paused = paused;
        spec.ext = JobExt {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..JobExt::default()
        };
        Job {
            id: id.into(),
            spec,
            incarnation: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            version: 1,
            schedule_base_ms: 0,
            cursor_ms: 0,
        }
    }

    /// 1,000 jobs: `j0000`…`j0999`; team a/b/c by id mod 3, env prod every 10th, paused every
    /// 7th, at one of two targets by id mod 2.
    fn tables() -> (MemTables, Vec<Job>) {
        let t = MemTables::default();
        let mut all = Vec::new();
        for i in 0..1000 {
            let team = ["a", "b", "c"][i % 3];
            let env = if i % 10 == 0 { "prod" } else { "dev" };
            let url = if i % 2 == 0 {
                "http://x.test/"
            } else {
                "http://y.test:81/"
            };
            let j = job(
                &format!("j{i:04}"),
                url,
                &[("team", team), ("env", env)],
                i % 7 == 0,
            );
            crate::core::records::put_job(&t, &j, None).unwrap();
            all.push(j);
        }
        (t, all)
    }

    /// Every page of `filter` at `limit` and `budget`, followed to the end.
    fn all_pages(
        view: &View<&MemTables>,
        filter: &JobFilter,
        limit: usize,
        budget: usize,
    ) -> Vec<String> {
        let (mut ids, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let page = view
                .list_jobs_filtered(filter, after.as_deref(), limit, budget)
                .unwrap();
            assert!(page.jobs.len() <= limit);
            ids.extend(page.jobs.iter().map(|j| j.id.clone()));
            pages += 1;
            assert!(pages < 10_000, "no progress");
            match page.next {
                None => return ids,
                Some(n) => {
                    assert!(after.as_ref().is_none_or(|a| n > *a), "the cursor moves on");
                    after = Some(n);
                }
            }
        }
    }

    #[test]
    fn filtered_pages_list_exactly_the_matching_jobs_in_id_order_at_any_page_size_and_budget() {
        let (t, all) = tables();
        let view = View::new(&t);
        let filters = [
            ("team=a", None, None, None),
            ("team in (a,b),env=prod", None, None, None),
            ("team!=a", None, None, None),
            ("env=prod", Some(JobState::Paused), None, None),
            ("team=c", None, Some("y.test:81"), Some("j01")),
            ("!env", None, None, None),
            ("env", Some(JobState::Active), None, None),
            ("team=zzz", None, None, None),
        ];
        for (selector, state, target, prefix) in filters {
            let filter = JobFilter {
                selector: parse_selector(selector).unwrap(),
                state,
                target: target.map(str::to_owned),
                prefix: prefix.map(str::to_owned),
            };
            let want: Vec<String> = all
                .iter()
                .filter(|j| filter.matches(j))
                .map(|j| j.id.clone())
                .collect();
            for (limit, budget) in [(100, 4096), (7, 4096), (1, 4096), (50, 5), (3, 20)] {
                let got = all_pages(&view, &filter, limit, budget);
                assert_eq!(
                    got, want,
                    "{selector} {state:?} {target:?} {prefix:?} {limit}/{budget}"
                );
            }
        }
    }

    #[test]
    fn a_budget_smaller_than_one_round_still_moves_the_cursor_on() {
        let (t, all) = tables();
        let view = View::new(&t);
        let filter = JobFilter {
            selector: parse_selector("team in (a,b,c),env in (prod,dev)").unwrap(),
            ..JobFilter::default()
        };
        let want: Vec<String> = all.iter().map(|j| j.id.clone()).collect();
        assert_eq!(all_pages(&view, &filter, 10, 1), want);
    }

    #[test]
    fn a_selective_page_reads_about_what_it_returns() {
        let (t, _) = tables();
        let view = View::new(&t);
        // env=prod and team=a: 34 of 1,000, one in 10 of the team=a jobs. Reading the team=a
        // entries and their jobs until 10 match takes ~190 rows; leapfrogging with the env=prod
        // entries reads jobs only where both agree.
        let filter = JobFilter {
            selector: parse_selector("team=a,env=prod").unwrap(),
            ..JobFilter::default()
        };
        let page = view.list_jobs_filtered(&filter, None, 10, 150).unwrap();
        assert_eq!(page.jobs.len(), 10, "found within 150 rows read");
    }

    /// 5 jobs of `tables()`'s kind with 40 runs each, due i×1000 ms; failed when i is even,
    /// succeeded otherwise.
    fn runs_world() -> (MemTables, Vec<Run>) {
        let (t, _) = tables();
        let mut runs = Vec::new();
        for j in 0..5 {
            let job_id = format!("j{j:04}");
            for i in 0..40 {
                let due = (i * 5 + j) as i64 * 1000;
                let run = Run {
                    id: Run::scheduled_id(1, due) + &job_id,
                    job_id: job_id.clone(),
                    incarnation: 1,
                    scheduled_at_ms: due,
                    status: if i % 2 == 0 {
                        RunStatus::Failed
                    } else {
                        RunStatus::Succeeded
                    },
                    attempts: Vec::new(),
                    next_attempt_at_ms: None,
                    manual: false,
                    skipped: None,
                    claimed_at_ms: due,
                    ext: Default::default(),
                };
                crate::core::records::insert_run(&t, &run, 1000).unwrap();
                runs.push(run);
            }
        }
        (t, runs)
    }

    #[test]
    fn filtered_run_pages_list_exactly_the_matching_runs_newest_first_at_any_size_and_budget() {
        let (t, all) = runs_world();
        let view = View::new(&t);
        let job_team = |id: &str| ["a", "b", "c"][id[1..].parse::<usize>().unwrap() % 3];
        let filters = [
            RunFilter {
                status: Some(RunStatus::Failed),
                ..RunFilter::default()
            },
            RunFilter {
                status: Some(RunStatus::Succeeded),
                since_ms: Some(50_000),
                until_ms: Some(120_000),
                ..RunFilter::default()
            },
            RunFilter {
                job_id: Some("j0003".into()),
                ..RunFilter::default()
            },
            RunFilter {
                job_id: Some("j0002".into()),
                status: Some(RunStatus::Failed),
                until_ms: Some(100_000),
                ..RunFilter::default()
            },
            RunFilter {
                status: Some(RunStatus::Failed),
                jobs: JobFilter {
                    selector: parse_selector("team=b").unwrap(),
                    ..JobFilter::default()
                },
                ..RunFilter::default()
            },
        ];
        for filter in filters {
            let mut want: Vec<&Run> = all
                .iter()
                .filter(|r| filter.status.is_none_or(|s| r.status == s))
                .filter(|r| filter.job_id.as_ref().is_none_or(|j| *j == r.job_id))
                .filter(|r| filter.since_ms.is_none_or(|s| r.scheduled_at_ms >= s))
                .filter(|r| filter.until_ms.is_none_or(|u| r.scheduled_at_ms <= u))
                .filter(|r| filter.jobs.selector.is_empty() || job_team(&r.job_id) == "b")
                .collect();
            want.sort_by(|a, b| (b.scheduled_at_ms, &b.id).cmp(&(a.scheduled_at_ms, &a.id)));
            let want: Vec<String> = want.iter().map(|r| r.id.clone()).collect();
            for (limit, budget) in [(100, 4096), (7, 4096), (1, 4096), (50, 3)] {
                let (mut got, mut after) = (Vec::new(), None::<RunCursor>);
                for _ in 0..1000 {
                    let page = view
                        .list_runs_filtered(&filter, after.as_ref(), limit, budget)
                        .unwrap();
                    assert!(page.runs.len() <= limit);
                    got.extend(page.runs.iter().map(|r| r.id.clone()));
                    match page.next {
                        None => break,
                        Some(n) => {
                            let text = n.to_string();
                            after = Some(RunCursor::parse(&text).expect("a cursor reads back"));
                        }
                    }
                }
                assert_eq!(got, want, "{filter:?} {limit}/{budget}");
            }
        }
    }

    #[test]
    fn index_entries_follow_every_change_of_a_job() {
        let t = MemTables::default();
        let old = job("a", "http://x.test/", &[("k", "1")], false);
        crate::core::records::put_job(&t, &old, None).unwrap();
        let new = job("a", "http://z.test/", &[("k", "2"), ("m", "")], true);
        crate::core::records::put_job(&t, &new, Some(&old)).unwrap();
        let index = |t: &MemTables| -> Vec<Vec<u8>> {
            let t = t.0.borrow();
            t.keys()
                .filter(|(table, _)| *table == Table::JobIndex as u8)
                .map(|(_, k)| k.clone())
                .collect()
        };
        let stored = index(&t);
        let mut want = job_index_keys(&new);
        want.sort();
        assert_eq!(stored, want);
        crate::core::records::delete_job_record(&t, &new).unwrap();
        assert!(index(&t).is_empty());
        assert!(Tables::get(&t, Table::Jobs, b"a").unwrap().is_none());
    }
}

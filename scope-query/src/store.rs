//! Opening a store: find its tables and sessions, check every Parquet file's
//! footer, and register each table in a DataFusion [`SessionContext`] over
//! the files as they lie, with `session_id` from the Hive directory name,
//! exactly the rows DuckDB's `read_parquet('<table>/**/*.parquet',
//! hive_partitioning = true)` sees.
//!
//! A store is any directory (or object-store prefix) holding
//! `<table>/session_id=<id>/*.parquet`; the tables are found, not listed in
//! code, so tables added later are registered too. A file whose footer
//! cannot be read (half written by a killed writer of another tool,
//! truncated, not Parquet) is skipped with a warning naming it; the table
//! is then registered file by file so the rest still answers.
//!
//! Everything here is blocking: the store owns a small Tokio runtime and
//! every call waits on it. The reading commands are one-shot CLI commands,
//! and a blocking API keeps them (and their tests) simple.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Schema, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::physical_plan::wrap_partition_type_in_dict;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use futures::StreamExt as _;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::file::metadata::ParquetMetaData;

/// Numbers the tables [`Store::register_calls_subset`] registers.
static SUBSETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The partition column every table gets from its directory names.
pub const SESSION_COLUMN: &str = "session_id";

/// Where a store lies: a local directory, or a prefix in an object store.
#[derive(Clone)]
pub struct Location {
    /// What the user gave, for messages (`scope-data`, `s3://bkt/traces`).
    pub display: String,
    /// The URL DataFusion resolves (`file:///abs/scope-data/`,
    /// `s3://bkt/traces/`), always ending in `/`.
    pub url: url::Url,
    /// The store that URL's scheme and authority name.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix of the store's root inside `store`.
    pub prefix: ObjPath,
    /// The local directory, when the store is one.
    pub local: Option<PathBuf>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("display", &self.display)
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Location {
    /// A local directory. It must exist: a reading command on a path that
    /// is not there says so instead of answering from an empty store.
    pub fn local(dir: &Path) -> Result<Location> {
        let abs = std::fs::canonicalize(dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "{}: no such directory (record or attach write one; --data names another)",
                    dir.display()
                )
            } else {
                anyhow!("{}: {e}", dir.display())
            }
        })?;
        if !abs.is_dir() {
            bail!("{}: not a directory", dir.display());
        }
        let url = url::Url::from_directory_path(&abs)
            .map_err(|()| anyhow!("{}: cannot be made a file:// URL", abs.display()))?;
        let prefix = ObjPath::from_filesystem_path(&abs)
            .with_context(|| format!("{}: not a usable path", abs.display()))?;
        Ok(Location {
            display: dir.display().to_string(),
            url,
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            prefix,
            local: Some(abs),
        })
    }

    /// A location from what the user typed: a URL with a scheme other than
    /// `file` goes to [`crate::objstore`] hooks; anything else is a path.
    pub fn parse(s: &str) -> Result<Location> {
        if let Some(rest) = s.strip_prefix("file://") {
            return Location::local(Path::new(rest));
        }
        if s.contains("://") {
            return remote_location(s);
        }
        Location::local(Path::new(s))
    }
}

/// An object-store location (`s3://bucket/prefix`), configured the way AWS
/// tools are ([`crate::objstore`]); wrong credentials, a missing bucket or
/// an unreachable endpoint give one line here, before any query.
fn remote_location(s: &str) -> Result<Location> {
    match crate::objstore::open_location(s)? {
        crate::objstore::Location::Local(p) => Location::local(&p),
        crate::objstore::Location::Remote(r) => {
            let rt = crate::objstore::runtime()?;
            rt.block_on(crate::objstore::check_access(&r))
                .map_err(|e| anyhow!("{}", e.message))?;
            let mut url = r.url.clone();
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            Ok(Location {
                display: s.to_string(),
                url,
                store: r.store.clone(),
                prefix: r.prefix.clone(),
                local: None,
            })
        }
    }
}

/// An SQL type name for a column that must read as null.
fn sql_type(t: &DataType) -> &'static str {
    match t {
        DataType::Boolean => "BOOLEAN",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "INT",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => "INT UNSIGNED",
        DataType::UInt64 => "BIGINT UNSIGNED",
        DataType::Float32 | DataType::Float64 => "DOUBLE",
        DataType::Utf8 | DataType::LargeUtf8 => "VARCHAR",
        _ => "BIGINT",
    }
}

/// A query of no rows with `schema`'s columns and `session_id`: a table
/// with no readable file still has its shape.
fn empty_table_sql(schema: &Schema) -> String {
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "CAST(NULL AS {}) AS \"{}\"",
                sql_type(f.data_type()),
                f.name()
            )
        })
        .collect();
    format!(
        "SELECT {}, CAST(NULL AS VARCHAR) AS {SESSION_COLUMN} WHERE false",
        cols.join(", ")
    )
}

/// One table of the store, as found.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// Directory name: `calls`, `functions`, ….
    pub name: String,
    /// The schema of its files, merged (a column missing from older files
    /// reads as null), without `session_id`.
    pub schema: SchemaRef,
    /// Readable files per session id, as paths inside the object store.
    pub files: BTreeMap<String, Vec<FileInfo>>,
}

/// One readable Parquet file.
#[derive(Clone, Debug)]
pub struct FileInfo {
    /// Its path in the object store.
    pub path: ObjPath,
    /// Bytes.
    pub size: u64,
    /// Rows, from the footer.
    pub rows: u64,
    /// For a `calls` file, the ranges its footer's statistics give: the
    /// index time travel picks files by.
    pub calls: Option<CallsRange>,
}

/// What a `calls` file's row-group statistics say about its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallsRange {
    /// Lowest and highest thread id.
    pub tid: (i64, i64),
    /// Earliest and latest entry, epoch ns.
    pub start_ns: (i64, i64),
    /// The longest duration.
    pub longest_ns: i64,
    /// Whether a call in it never returned (a null duration): it is open
    /// from its entry to the end of the session.
    pub open_calls: bool,
}

impl CallsRange {
    /// Whether the file can hold a call of thread `tid` that was running
    /// at some instant in `from_ns..=to_ns` (entered at or before `to_ns`,
    /// not returned before `from_ns`).
    pub fn may_overlap(&self, tid: i64, from_ns: i64, to_ns: i64) -> bool {
        self.tid.0 <= tid
            && tid <= self.tid.1
            && self.start_ns.0 <= to_ns
            && (self.open_calls || self.start_ns.1.saturating_add(self.longest_ns) > from_ns)
    }
}

/// A file that was left out, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    /// The file (a URL or a path).
    pub file: String,
    /// What was wrong with it.
    pub why: String,
}

/// Which sessions a reading command looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionSel {
    /// Every session in the store (what DuckDB sees).
    All,
    /// The newest session (by id: ids begin with their UTC start time).
    Latest,
    /// One session by id (or a unique prefix of one).
    Id(String),
}

impl SessionSel {
    /// `all`, `latest`, or an id.
    pub fn parse(s: &str) -> SessionSel {
        match s {
            "all" => SessionSel::All,
            "latest" | "last" => SessionSel::Latest,
            id => SessionSel::Id(id.to_string()),
        }
    }
}

/// An open store: its tables registered for SQL.
pub struct Store {
    rt: tokio::runtime::Runtime,
    ctx: SessionContext,
    location: Location,
    tables: BTreeMap<String, TableInfo>,
    sessions: Vec<String>,
    selected: Option<Vec<String>>,
    skipped: Vec<Skipped>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Which sessions the registered tables show.
    pub sessions: SessionSel,
    /// Memory the query engine may use before it spills sorts and joins to
    /// disk; `None`: unbounded.
    pub memory_limit: Option<usize>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            sessions: SessionSel::All,
            memory_limit: None,
        }
    }
}

impl Store {
    /// Opens the store at `data` (a directory, `file://DIR`, or an object
    /// store URL) and registers its tables.
    pub fn open(data: &str, opts: &OpenOptions) -> Result<Store> {
        let location = Location::parse(data)?;
        Store::open_location(location, opts)
    }

    /// Opens a store at an already parsed [`Location`].
    pub fn open_location(location: Location, opts: &OpenOptions) -> Result<Store> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
                    .clamp(1, 8),
            )
            .thread_name("scope-query")
            .enable_all()
            .build()
            .context("cannot start the query runtime")?;
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
            );
        config.options_mut().sql_parser.collect_spans = true;
        config.options_mut().execution.parquet.pushdown_filters = true;
        config.options_mut().execution.parquet.reorder_filters = true;
        // A hash join's build side pushed into the scan as a per-row filter
        // costs more than it saves here: the store's joins are to small
        // tables (functions) whose keys match nearly every call. At 100 M
        // calls, top 20 by self time took 5.3 s with it and 4.0–4.4 s
        // without; filters written in the query are still pushed down.
        config
            .options_mut()
            .optimizer
            .enable_join_dynamic_filter_pushdown = false;
        let ctx = match opts.memory_limit {
            Some(bytes) => {
                let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                    .with_memory_pool(Arc::new(
                        datafusion::execution::memory_pool::FairSpillPool::new(bytes),
                    ))
                    .build_arc()
                    .context("cannot set up the query engine's memory pool")?;
                SessionContext::new_with_config_rt(config, runtime)
            }
            None => SessionContext::new_with_config(config),
        };
        ctx.register_object_store(&location.url, location.store.clone());
        let mut store = Store {
            rt,
            ctx,
            location,
            tables: BTreeMap::new(),
            sessions: Vec::new(),
            selected: None,
            skipped: Vec::new(),
        };
        store.scan()?;
        store.select(&opts.sessions)?;
        store.register()?;
        for s in &store.skipped {
            eprintln!("scope-agent: warning: skipped {}: {}", s.file, s.why);
        }
        Ok(store)
    }

    /// Lists every table directory and file, reading each footer.
    fn scan(&mut self) -> Result<()> {
        let store = self.location.store.clone();
        let prefix = self.location.prefix.clone();
        let display = self.location.display.clone();
        let (tables, skipped) = self.rt.block_on(async move {
            let mut listing = store.list(Some(&prefix));
            let mut found: BTreeMap<String, BTreeMap<String, Vec<(ObjPath, u64)>>> =
                BTreeMap::new();
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| anyhow!("{display}: cannot list: {e}"))?;
                let Some(rel) = meta.location.prefix_match(&prefix) else {
                    continue;
                };
                let parts: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
                // <table>/session_id=<id>/<file>.parquet, nothing else:
                // hidden names (a writer's `.part-*.tmp`, a compaction's
                // staging tree) never count.
                let [table, session, file] = parts.as_slice() else {
                    continue;
                };
                if table.starts_with('.') || file.starts_with('.') || !file.ends_with(".parquet") {
                    continue;
                }
                let Some(id) = session.strip_prefix("session_id=") else {
                    continue;
                };
                found
                    .entry(table.clone())
                    .or_default()
                    .entry(id.to_string())
                    .or_default()
                    .push((meta.location.clone(), meta.size));
            }
            let mut tables = BTreeMap::new();
            let mut skipped = Vec::new();
            for (name, sessions) in found {
                let mut schemas: Vec<Schema> = Vec::new();
                let mut files: BTreeMap<String, Vec<FileInfo>> = BTreeMap::new();
                // Every footer at once (16 in flight): a store of a few
                // hundred segments opens in one round trip's time, locally
                // and on S3 alike.
                let mut wanted: Vec<(String, ObjPath, u64)> = Vec::new();
                for (id, mut paths) in sessions {
                    paths.sort();
                    wanted.extend(paths.into_iter().map(|(p, n)| (id.clone(), p, n)));
                }
                let is_calls = name == "calls";
                let read: Vec<_> =
                    futures::stream::iter(wanted.into_iter().map(|(id, path, size)| {
                        let store = store.clone();
                        async move {
                            let r = read_footer(store.as_ref(), &path, size, is_calls).await;
                            (id, path, size, r)
                        }
                    }))
                    .buffered(16)
                    .collect()
                    .await;
                for (id, path, size, r) in read {
                    match r {
                        Ok(footer) => {
                            if !schemas.iter().any(|s| s == &footer.schema) {
                                schemas.push(footer.schema);
                            }
                            files.entry(id).or_default().push(FileInfo {
                                path,
                                size,
                                rows: footer.rows,
                                calls: footer.calls,
                            });
                        }
                        Err(why) => skipped.push(Skipped {
                            file: path.to_string(),
                            why: format!("{why:#}"),
                        }),
                    }
                }
                if files.is_empty() {
                    continue;
                }
                let schema = merge_schemas(&name, schemas)?;
                tables.insert(
                    name.clone(),
                    TableInfo {
                        name,
                        schema: Arc::new(schema),
                        files,
                    },
                );
            }
            Ok::<_, anyhow::Error>((tables, skipped))
        })?;
        let mut sessions: Vec<String> = tables
            .values()
            .flat_map(|t| t.files.keys().cloned())
            .collect();
        sessions.sort();
        sessions.dedup();
        self.tables = tables;
        self.sessions = sessions;
        self.skipped = skipped;
        if self.tables.is_empty() {
            bail!(
                "{}: no scope tables here (expected <table>/session_id=<id>/*.parquet, as record and attach write)",
                self.location.display
            );
        }
        Ok(())
    }

    /// Narrows the registered tables to `sel`.
    fn select(&mut self, sel: &SessionSel) -> Result<()> {
        self.selected = match sel {
            SessionSel::All => None,
            SessionSel::Latest => {
                Some(vec![self.sessions.last().cloned().ok_or_else(|| {
                    anyhow!("{}: no sessions", self.location.display)
                })?])
            }
            SessionSel::Id(id) => Some(vec![self.resolve_session(id)?]),
        };
        Ok(())
    }

    /// The one session `id` names: an exact id, or a unique prefix of one,
    /// or its pid or host part (`20261127T171000Z-4242-web1`: `4242`,
    /// `web1`, `4242-web1`).
    pub fn resolve_session(&self, id: &str) -> Result<String> {
        if self.sessions.iter().any(|s| s == id) {
            return Ok(id.to_string());
        }
        let matches: Vec<&String> = self
            .sessions
            .iter()
            .filter(|s| {
                s.starts_with(id)
                    || s.ends_with(&format!("-{id}"))
                    || s.contains(&format!("-{id}-"))
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!(
                "no session {id:?} in {} (sessions: {})",
                self.location.display,
                self.session_list()
            ),
            many => bail!(
                "session {id:?} is ambiguous in {}: {}",
                self.location.display,
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The sessions, for messages: all when few, else the first and last.
    pub fn session_list(&self) -> String {
        match self.sessions.len() {
            0 => "none".to_string(),
            n if n <= 6 => self.sessions.join(", "),
            n => format!(
                "{} … {} ({n} in all; `scope-agent query 'SELECT * FROM sessions'` lists them)",
                self.sessions[..2].join(", "),
                self.sessions[n - 2..].join(", ")
            ),
        }
    }

    /// Registers every table under its own name: the whole table directory
    /// with Hive partitioning when every file is readable; else, per
    /// session, a table over its readable files by name, with the session
    /// id added as a constant, under one `UNION ALL` view. A selection of
    /// sessions is a view that filters `session_id` (pruned by partition,
    /// so the other sessions' files are never opened).
    fn register(&mut self) -> Result<()> {
        let names: Vec<String> = self.tables.keys().cloned().collect();
        for name in names {
            let info = self.tables[&name].clone();
            let prefix = format!("{}/", self.table_prefix(&name));
            let damaged = self.skipped.iter().any(|s| s.file.starts_with(&prefix));
            let wanted: Vec<&String> = match &self.selected {
                None => info.files.keys().collect(),
                Some(sel) => info.files.keys().filter(|k| sel.contains(k)).collect(),
            };
            let view = if !damaged {
                let url = ListingTableUrl::parse(format!("{}{name}/", self.location.url))?;
                let options = listing_options().with_table_partition_cols(vec![(
                    SESSION_COLUMN.to_string(),
                    // A dictionary: one value per file and a key per
                    // row, not the id copied into every row (joins and
                    // filters on session_id then cost little).
                    wrap_partition_type_in_dict(DataType::Utf8),
                )]);
                let config = ListingTableConfig::new(url)
                    .with_listing_options(options)
                    .with_schema(info.schema.clone());
                let table = Arc::new(ListingTable::try_new(config)?);
                match &self.selected {
                    None => {
                        self.ctx
                            .register_table(name.as_str(), table)
                            .with_context(|| format!("cannot register table {name}"))?;
                        continue;
                    }
                    Some(sel) => {
                        let raw = format!("scope_raw_{name}");
                        self.ctx.register_table(raw.as_str(), table)?;
                        let list: Vec<String> = sel.iter().map(|s| sql_str(s)).collect();
                        format!(
                            "SELECT * FROM {raw} WHERE {SESSION_COLUMN} IN ({})",
                            list.join(", ")
                        )
                    }
                }
            } else {
                let mut parts = Vec::new();
                for (i, id) in wanted.iter().enumerate() {
                    let raw = format!("scope_raw_{name}_{i}");
                    parts.push(self.register_files(&raw, id, &info.files[*id], &info.schema)?);
                }
                if parts.is_empty() {
                    // No readable file of the selected sessions: an empty
                    // table of the right shape.
                    empty_table_sql(&info.schema)
                } else {
                    parts.join(" UNION ALL ")
                }
            };
            self.create_view(&name, &view)?;
        }
        Ok(())
    }

    /// `s3://bkt` or `file://` (no trailing slash): what an object path is
    /// appended to for a full URL.
    fn url_root(&self) -> String {
        let mut u = self.location.url.clone();
        u.set_path("/");
        let s = u.to_string();
        s.trim_end_matches('/').to_string() + "/"
    }

    /// The object path prefix of one table's directory, as a string.
    fn table_prefix(&self, table: &str) -> String {
        if self.location.prefix.as_ref().is_empty() {
            table.to_string()
        } else {
            format!("{}/{table}", self.location.prefix)
        }
    }

    /// Where the store is, as the user named it.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The tables found, by name.
    pub fn tables(&self) -> &BTreeMap<String, TableInfo> {
        &self.tables
    }

    /// Whether the store has `table`.
    pub fn has_table(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }

    /// Every session id in the store, oldest first.
    pub fn sessions(&self) -> &[String] {
        &self.sessions
    }

    /// The sessions the registered tables show, oldest first.
    pub fn selected_sessions(&self) -> Vec<String> {
        match &self.selected {
            None => self.sessions.clone(),
            Some(s) => s.clone(),
        }
    }

    /// Files that were left out, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The DataFusion context, for callers that build plans themselves.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs `fut` on the store's runtime.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// `sql` planned, or its error as [`Store::sql_error`] words it.
    async fn frame(&self, sql: &str) -> Result<DataFrame> {
        self.ctx.sql(sql).await.map_err(|e| self.sql_error(sql, e))
    }

    /// Runs `sql` and collects every batch. For small results (reports);
    /// use [`Store::stream`] for anything that grows with the store.
    pub fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.rt.block_on(async {
            let df = self.frame(sql).await?;
            df.collect().await.map_err(|e| self.sql_error(sql, e))
        })
    }

    /// Runs `sql` and returns its schema and a blocking iterator over its
    /// batches: memory stays bounded by the plan, not by the result.
    pub fn stream(&self, sql: &str) -> Result<BatchIter<'_>> {
        let stream = self.rt.block_on(async {
            let df = self.frame(sql).await?;
            df.execute_stream()
                .await
                .map_err(|e| self.sql_error(sql, e))
        })?;
        Ok(BatchIter {
            store: self,
            stream,
        })
    }

    /// The `calls` files of `session` that may hold a call of thread `tid`
    /// running at some instant in `from_ns..=to_ns`, by their footers'
    /// statistics; `None` when a file of the session has none (or a file
    /// of the table was skipped), and the whole table must be read.
    pub fn calls_files_near(
        &self,
        session: &str,
        tid: i64,
        from_ns: i64,
        to_ns: i64,
    ) -> Option<Vec<FileInfo>> {
        let info = self.tables.get("calls")?;
        let prefix = format!("{}/", self.table_prefix("calls"));
        if self.skipped.iter().any(|s| s.file.starts_with(&prefix)) {
            return None;
        }
        let mut out = Vec::new();
        for f in info.files.get(session)? {
            if f.calls?.may_overlap(tid, from_ns, to_ns) {
                out.push(f.clone());
            }
        }
        Some(out)
    }

    /// The longest call of `session` by its `calls` footers (`None` when a
    /// file has no statistics).
    pub fn longest_call(&self, session: &str) -> Option<i64> {
        let files = self.tables.get("calls")?.files.get(session)?;
        files
            .iter()
            .map(|f| f.calls.map(|c| c.longest_ns))
            .try_fold(0, |m, l| l.map(|l| m.max(l)))
    }

    /// Registers `files` of `session` (from [`Store::calls_files_near`])
    /// as a table like `calls` under a new name, and returns that name:
    /// a point query then opens those files only.
    pub fn register_calls_subset(&self, session: &str, files: &[FileInfo]) -> Result<String> {
        let info = &self.tables["calls"];
        let n = SUBSETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("scope_calls_subset_{n}");
        if files.is_empty() {
            self.create_view(&name, &empty_table_sql(&info.schema))?;
            return Ok(name);
        }
        let raw = format!("{name}_raw");
        let view = self.register_files(&raw, session, files, &info.schema)?;
        self.create_view(&name, &view)?;
        Ok(name)
    }

    /// Registers `files` of `session` as the table `raw`, and returns the
    /// query that adds their `session_id`.
    fn register_files(
        &self,
        raw: &str,
        session: &str,
        files: &[FileInfo],
        schema: &SchemaRef,
    ) -> Result<String> {
        let urls = files
            .iter()
            .map(|f| ListingTableUrl::parse(format!("{}{}", self.url_root(), f.path)))
            .collect::<Result<Vec<_>, _>>()?;
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(listing_options())
            .with_schema(schema.clone());
        self.ctx
            .register_table(raw, Arc::new(ListingTable::try_new(config)?))?;
        Ok(format!(
            "SELECT *, {} AS {SESSION_COLUMN} FROM {raw}",
            sql_str(session)
        ))
    }

    fn create_view(&self, name: &str, sql: &str) -> Result<()> {
        self.rt
            .block_on(async {
                self.ctx
                    .sql(&format!("CREATE VIEW {name} AS {sql}"))
                    .await?
                    .collect()
                    .await
            })
            .with_context(|| format!("cannot register table {name}"))?;
        Ok(())
    }

    /// Runs `sql` as one stream per partition of its plan, for a caller
    /// that folds every partition at once on the store's runtime (as
    /// `report` does) instead of merging them into one stream first.
    pub fn partitions(&self, sql: &str) -> Result<Vec<SendableRecordBatchStream>> {
        self.rt.block_on(async {
            let df = self.frame(sql).await?;
            df.execute_stream_partitioned()
                .await
                .map_err(|e| self.sql_error(sql, e))
        })
    }

    /// Runs `sql` with one task per partition of its plan, each folding
    /// its batches into its own accumulator (made by `init`) with `fold`,
    /// so the decoding and the folding run on every core at once. The
    /// accumulators come back for the caller to merge.
    pub fn fold_partitions<A, I, F>(&self, sql: &str, init: I, fold: F) -> Result<Vec<A>>
    where
        A: Send + 'static,
        I: Fn() -> A + Send + Sync + 'static,
        F: Fn(&mut A, &RecordBatch) -> Result<()> + Send + Sync + 'static,
    {
        let streams = self.partitions(sql)?;
        let (init, fold) = (Arc::new(init), Arc::new(fold));
        self.rt.block_on(async {
            let tasks: Vec<_> = streams
                .into_iter()
                .map(|mut stream| {
                    let (init, fold) = (init.clone(), fold.clone());
                    tokio::spawn(async move {
                        let mut acc = init();
                        while let Some(b) = stream.next().await {
                            fold(&mut acc, &b.map_err(|e| anyhow!("{e}"))?)?;
                        }
                        Ok::<_, anyhow::Error>(acc)
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await.map_err(|e| anyhow!("a scan task failed: {e}"))??);
            }
            Ok(out)
        })
    }

    /// An SQL error as one message: DataFusion's own words, the query with
    /// a caret under the position it names, and the tables and columns
    /// there are.
    pub fn sql_error(&self, sql: &str, e: DataFusionError) -> anyhow::Error {
        let mut msg = String::new();
        let inner = strip_context(&e);
        let _ = write!(msg, "{inner}");
        let span = e.diagnostic().and_then(|d| d.span).or_else(|| {
            // A parser error names "Line: L, Column: C" in its text.
            parse_line_col(&inner)
        });
        if let Some((line, col)) = span.map(|s| (s.start.line, s.start.column))
            && line >= 1
            && col >= 1
            && let Some(text) = sql.lines().nth((line - 1) as usize)
        {
            let _ = write!(
                msg,
                "\n  at line {line}, column {col}:\n    {text}\n    {}^",
                " ".repeat((col - 1) as usize)
            );
        }
        let _ = write!(msg, "\n{}", self.describe_tables());
        anyhow!(msg)
    }

    /// The tables and their columns, one line each.
    pub fn describe_tables(&self) -> String {
        let mut s = String::from("tables in this store:");
        for t in self.tables.values() {
            let cols: Vec<&str> = t
                .schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .chain([SESSION_COLUMN])
                .collect();
            let _ = write!(s, "\n  {}({})", t.name, cols.join(", "));
        }
        s
    }
}

/// A blocking iterator over a query's batches.
pub struct BatchIter<'a> {
    store: &'a Store,
    stream: SendableRecordBatchStream,
}

impl BatchIter<'_> {
    /// The result's schema.
    pub fn schema(&self) -> SchemaRef {
        self.stream.schema()
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let stream = &mut self.stream;
        self.store
            .rt
            .block_on(stream.next())
            .map(|r| r.map_err(|e| anyhow!("{}", strip_context(&e))))
    }
}

/// Options every listing table shares: `.parquet` files, statistics kept
/// for pruning.
fn listing_options() -> ListingOptions {
    let format = ParquetFormat::default().with_enable_pruning(true);
    ListingOptions::new(Arc::new(format)).with_file_extension(".parquet")
}

/// What a file's footer says.
struct Footer {
    schema: Schema,
    rows: u64,
    calls: Option<CallsRange>,
}

/// Min and max of an integer column over every row group, and whether any
/// is null; `None` when a row group has no statistics for it.
fn int_range(meta: &ParquetMetaData, column: &str) -> Option<(i64, i64, bool)> {
    use parquet::file::statistics::Statistics;
    let descr = meta.file_metadata().schema_descr();
    let idx = (0..descr.num_columns()).find(|&i| descr.column(i).path().string() == column)?;
    let unsigned = matches!(
        descr.column(idx).logical_type_ref(),
        Some(parquet::basic::LogicalType::Integer(t)) if !t.is_signed
    );
    let mut out: Option<(i64, i64, bool)> = None;
    for rg in meta.row_groups() {
        let stats = rg.column(idx).statistics()?;
        let nulls = stats.null_count_opt().is_none_or(|n| n > 0);
        let (lo, hi) = match stats {
            Statistics::Int32(v) if unsigned => (
                i64::from(*v.min_opt()? as u32),
                i64::from(*v.max_opt()? as u32),
            ),
            Statistics::Int32(v) => (i64::from(*v.min_opt()?), i64::from(*v.max_opt()?)),
            Statistics::Int64(v) if !unsigned => (*v.min_opt()?, *v.max_opt()?),
            _ if rg.num_rows() == 0 => continue,
            _ => return None,
        };
        out = Some(match out {
            None => (lo, hi, nulls),
            Some((a, b, n)) => (a.min(lo), b.max(hi), n || nulls),
        });
    }
    out
}

/// The ranges of a `calls` file, when its footer has the statistics.
fn calls_range(meta: &ParquetMetaData) -> Option<CallsRange> {
    let (t0, t1, _) = int_range(meta, "tid")?;
    let (s0, s1, _) = int_range(meta, "start_ns")?;
    // A row group whose every duration is null has no min/max: then treat
    // the file as holding open calls with no known length.
    let (longest, open_calls) = match int_range(meta, "duration_ns") {
        Some((_, hi, nulls)) => (hi.max(0), nulls),
        None => (0, true),
    };
    Some(CallsRange {
        tid: (t0, t1),
        start_ns: (s0, s1),
        longest_ns: longest,
        open_calls,
    })
}

/// Reads a file's footer: its Arrow schema, row count and, for a `calls`
/// file, its ranges. Errors say what is wrong with the file in a few
/// words.
async fn read_footer(
    store: &dyn ObjectStore,
    path: &ObjPath,
    size: u64,
    is_calls: bool,
) -> Result<Footer> {
    if size < 12 {
        bail!("{size} bytes: too short for Parquet (half written?)");
    }
    let tail = store
        .get_range(path, size - 8..size)
        .await
        .map_err(|e| anyhow!("cannot read: {e}"))?;
    if &tail[4..8] != b"PAR1" {
        bail!("no Parquet footer (half written or not Parquet)");
    }
    let len = u32::from_le_bytes(tail[0..4].try_into().expect("4 bytes")) as u64;
    if len + 12 > size {
        bail!("footer length {len} exceeds the file's {size} bytes (corrupt)");
    }
    let footer = store
        .get_range(path, size - 8 - len..size - 8)
        .await
        .map_err(|e| anyhow!("cannot read: {e}"))?;
    let meta = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer)
        .map_err(|e| anyhow!("corrupt footer: {e}"))?;
    let file_meta = meta.file_metadata();
    let schema = parquet::arrow::parquet_to_arrow_schema(
        file_meta.schema_descr(),
        file_meta.key_value_metadata(),
    )
    .map_err(|e| anyhow!("unreadable schema: {e}"))?;
    // Metadata (the embedded Arrow schema's options) differs between
    // writers and is irrelevant here.
    let schema = Schema::new(schema.fields().clone());
    Ok(Footer {
        schema,
        rows: file_meta.num_rows().max(0) as u64,
        calls: if is_calls { calls_range(&meta) } else { None },
    })
}

/// One schema for a table whose files were written by different versions:
/// the union of their columns (newer columns read as null in older files).
fn merge_schemas(table: &str, schemas: Vec<Schema>) -> Result<Schema> {
    let mut merged = Schema::try_merge(schemas.iter().cloned())
        .map_err(|e| anyhow!("table {table}: its files disagree on a column's type: {e}"))?;
    // A column some files lack must be nullable in the merged schema.
    let fields: Vec<arrow_schema::Field> = merged
        .fields()
        .iter()
        .map(|f| {
            let everywhere = schemas.iter().all(|s| s.field_with_name(f.name()).is_ok());
            f.as_ref()
                .clone()
                .with_nullable(f.is_nullable() || !everywhere)
        })
        .collect();
    merged = Schema::new(fields);
    Ok(merged)
}

/// The innermost message of a DataFusion error, without the "Error during
/// planning:" style wrappers repeated by each layer.
fn strip_context(e: &DataFusionError) -> String {
    let mut e = e;
    loop {
        match e {
            DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => e = inner,
            DataFusionError::Shared(inner) => e = inner.as_ref(),
            _ => break,
        }
    }
    e.to_string()
}

/// "… at Line: 1, Column: 8" in a parser error.
fn parse_line_col(msg: &str) -> Option<datafusion::common::Span> {
    let i = msg.find("Line: ")?;
    let rest = &msg[i + 6..];
    let line: u64 = rest.split(',').next()?.trim().parse().ok()?;
    let j = rest.find("Column: ")?;
    let col: u64 = rest[j + 8..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()?;
    let loc = datafusion::common::Location { line, column: col };
    Some(datafusion::common::Span::new(loc, loc))
}

/// Quotes `s` as an SQL string literal.
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

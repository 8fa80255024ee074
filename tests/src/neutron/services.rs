//! The machine services under neutron-server (RabbitMQ, MariaDB), and the migrated
//! schema every instance's database is copied from.
//!
//! The services are shared by everything on the machine (other test binaries, other
//! developers): they are started if down and never stopped.

use std::{
    fs::{File, OpenOptions},
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::net::UnixStream, unix::process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// MariaDB's socket on Debian; root logs in through it without a password.
const MYSQL_SOCKET: &str = "/run/mysqld/mysqld.sock";
/// Where RabbitMQ listens for AMQP.
const AMQP_ADDR: &str = "127.0.0.1:5672";
/// Prefix of every database, database user, vhost and RabbitMQ user the harness makes.
pub(super) const PREFIX: &str = "dpt_neutron_";

/// Starts RabbitMQ and MariaDB if they are down, and removes what killed test
/// processes left behind; once per process.
pub(super) fn ensure_running() -> Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    // Test binaries start at the same time: only one of them runs the init scripts.
    let _lock = FileLock::acquire(Path::new("/tmp/dpt-neutron-services.lock"))?;
    let amqp: SocketAddr = AMQP_ADDR.parse().expect("a socket address");
    if TcpStream::connect_timeout(&amqp, Duration::from_secs(1)).is_err() {
        init_script("rabbitmq-server")?;
    }
    // The init script returns before the broker accepts connections.
    run(Command::new("rabbitmqctl").args(["-q", "await_startup"]))?;
    if UnixStream::connect(MYSQL_SOCKET).is_err() {
        init_script("mariadb")?;
    }
    remove_leftovers()?;
    *done = true;
    Ok(())
}

/// Runs `/etc/init.d/<service> start` (there is no systemd here), detached from us.
fn init_script(service: &str) -> Result<()> {
    let script = format!("/etc/init.d/{service}");
    let log_path = format!("/tmp/dpt-neutron-{service}-start.log");
    let log = File::create(&log_path).with_context(|| format!("creating {log_path}"))?;
    // The daemon inherits our descriptors: never our stdout, which `cargo xtask test`
    // reads until EOF, and its own process group, so that a Ctrl-C of the tests
    // does not take the machine's service down.
    let status = Command::new(&script)
        .arg("start")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating a log descriptor")?)
        .stderr(log)
        .process_group(0)
        .status()
        .with_context(|| format!("running {script} start (is the service installed? `cargo xtask setup`)"))?;
    if !status.success() {
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("`{script} start` failed ({status}): {}", out.trim());
    }
    Ok(())
}

/// Runs `cmd`; returns its stdout, or fails with its stderr.
pub(super) fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs SQL as MariaDB's root; returns the rows, tab-separated, without headers.
pub(super) fn mysql(sql: &str) -> Result<String> {
    run(Command::new("mysql").args(["--batch", "--skip-column-names", "-e", sql]))
}

/// Runs `rabbitmqctl -q ARGS`.
pub(super) fn rabbitmqctl(args: &[&str]) -> Result<String> {
    run(Command::new("rabbitmqctl").arg("-q").args(args))
}

/// Drops the databases, users and vhosts of test processes that no longer exist
/// (killed with SIGKILL, so their guards never ran).
fn remove_leftovers() -> Result<()> {
    let dead = |name: &str| {
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('_').next()) else { return false };
        pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for db in mysql(&format!("SHOW DATABASES LIKE '{PREFIX}%'"))?.lines().filter(|n| dead(n)) {
        mysql(&format!("DROP DATABASE IF EXISTS `{db}`; DROP USER IF EXISTS '{db}'@'localhost'"))?;
    }
    for vhost in rabbitmqctl(&["list_vhosts", "name"])?.lines().filter(|n| dead(n)) {
        rabbitmqctl(&["delete_vhost", vhost])?;
        // The user may be gone already, or never made it: not an error here.
        let _ = rabbitmqctl(&["delete_user", vhost]);
    }
    Ok(())
}

/// The template database: `neutron-db-manage upgrade heads` run once per machine and
/// neutron version (`key`), then copied into each instance's database, which takes
/// about 1 s instead of 5 to 10 s of migrating; returns its name.
pub(super) fn template(venv: &Path, key: u64, scratch: &Path) -> Result<String> {
    let name = format!("{PREFIX}template_{key:016x}");
    let _lock = FileLock::acquire(Path::new("/tmp/dpt-neutron-template.lock"))?;
    // The marker table is created last, so a migration cut short is never copied.
    let ready = mysql(&format!(
        "SELECT COUNT(*) FROM information_schema.tables \
         WHERE table_schema = '{name}' AND table_name = 'dpt_template_ready'"
    ))?;
    if ready.trim() == "1" {
        return Ok(name);
    }
    mysql(&format!(
        "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4; \
         CREATE USER IF NOT EXISTS '{name}'@'localhost' IDENTIFIED BY '{name}'; \
         GRANT ALL ON `{name}`.* TO '{name}'@'localhost'"
    ))?;
    let conf = scratch.join("template.conf");
    std::fs::write(
        &conf,
        format!("[database]\nconnection = mysql+pymysql://{name}:{name}@127.0.0.1/{name}?charset=utf8\n"),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    run(Command::new(venv.join("bin/neutron-db-manage"))
        .arg("--config-file")
        .arg(&conf)
        .args(["upgrade", "heads"]))
    .context("migrating the template database")?;
    mysql(&format!("CREATE TABLE `{name}`.dpt_template_ready (id INT)"))?;
    Ok(name)
}

/// Copies the template's tables and rows (the alembic version included) into `db`.
pub(super) fn copy_template(template: &str, db: &str) -> Result<()> {
    let pipe = format!(
        "mysqldump --single-transaction --ignore-table={template}.dpt_template_ready {template} | mysql {db}"
    );
    run(Command::new("bash").args(["-o", "pipefail", "-c", &pipe]))
        .with_context(|| format!("copying the template database {template} into {db}"))?;
    Ok(())
}

/// An exclusive `flock` on a file, held until drop; serialises work across test binaries.
struct FileLock(#[allow(dead_code, reason = "held for its descriptor, which holds the lock")] File);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        // SAFETY: the descriptor is open for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        // The lock goes with the descriptor when the file is dropped.
        Ok(Self(file))
    }
}

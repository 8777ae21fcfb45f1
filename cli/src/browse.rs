//! `stowage backup ls`: one pod volume's files in a backup, printed as the server streams
//! them (a batch at a time, never the whole listing held): a table with fixed-width columns,
//! or a JSON array / YAML sequence of entries that parses back whole.

use std::{io::Write as _, process::ExitCode};

use serde::{Deserialize, Serialize};
use stowage_proto::v1;

use crate::{
    BackupLs, Format,
    error::{Call, CliError},
    session::Session,
    table::human_bytes,
    view,
};

/// One file as `-o json|yaml` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileEntryView {
    /// Inside the volume, `/` being its root.
    pub path: String,
    /// `file`, `dir`, `symlink`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    /// As `ls -l` shows it: `drwxr-xr-x`.
    pub mode: String,
    pub mtime: Option<String>,
}

impl From<&v1::FileEntry> for FileEntryView {
    fn from(entry: &v1::FileEntry) -> Self {
        FileEntryView {
            path: entry.path.clone(),
            kind: entry.r#type.clone(),
            size: entry.size,
            mode: mode_text(&entry.r#type, entry.mode),
            mtime: view::rfc3339(&entry.mtime),
        }
    }
}

/// `ls -l`'s mode column from restic's node type and its permission bits.
pub fn mode_text(kind: &str, mode: u32) -> String {
    let first = match kind {
        "dir" => 'd',
        "symlink" => 'l',
        "dev" => 'b',
        "chardev" => 'c',
        "fifo" => 'p',
        "socket" => 's',
        _ => '-',
    };
    let mut text = String::with_capacity(10);
    text.push(first);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 0o4 != 0 { 'r' } else { '-' });
        text.push(if bits & 0o2 != 0 { 'w' } else { '-' });
        text.push(if bits & 0o1 != 0 { 'x' } else { '-' });
    }
    text
}

/// `namespace/pod/volume`, each part non-empty.
pub fn parse_volume(text: &str) -> Result<(String, String, String), CliError> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [namespace, pod, volume]
            if !namespace.is_empty() && !pod.is_empty() && !volume.is_empty() =>
        {
            Ok((namespace.to_string(), pod.to_string(), volume.to_string()))
        }
        _ => Err(CliError::Usage(format!(
            "`{text}` is not a pod volume: write it as namespace/pod/volume"
        ))),
    }
}

/// One table row; the widths are fixed so rows can be printed as they arrive.
fn row(entry: &FileEntryView) -> String {
    let size = if entry.kind == "dir" {
        "-".to_string()
    } else {
        human_bytes(entry.size)
    };
    format!(
        "{:<10}  {:>10}  {:<20}  {}\n",
        entry.mode,
        size,
        entry.mtime.as_deref().unwrap_or("-"),
        entry.path
    )
}

/// Renders each batch as it comes, in `format`; `printed` counts the entries so far.
struct Printer {
    format: Format,
    printed: usize,
}

impl Printer {
    fn begin(&self) -> String {
        match self.format {
            Format::Table => format!(
                "{:<10}  {:>10}  {:<20}  {}\n",
                "MODE", "SIZE", "MTIME", "PATH"
            ),
            Format::Json | Format::Yaml => String::new(),
        }
    }

    fn batch(&mut self, entries: &[FileEntryView]) -> Result<String, CliError> {
        let mut text = String::new();
        for entry in entries {
            match self.format {
                Format::Table => text.push_str(&row(entry)),
                Format::Json => {
                    text.push_str(if self.printed == 0 { "[\n  " } else { ",\n  " });
                    let json = serde_json::to_string(entry)
                        .map_err(|error| CliError::Output(error.to_string()))?;
                    text.push_str(&json);
                }
                Format::Yaml => {
                    let yaml = serde_yaml::to_string(std::slice::from_ref(entry))
                        .map_err(|error| CliError::Output(error.to_string()))?;
                    text.push_str(&yaml);
                }
            }
            self.printed += 1;
        }
        Ok(text)
    }

    fn end(&self) -> String {
        match (self.format, self.printed) {
            (Format::Json, 0) => "[]\n".to_string(),
            (Format::Json, _) => "\n]\n".to_string(),
            (Format::Yaml, 0) => "[]\n".to_string(),
            _ => String::new(),
        }
    }
}

/// Writes `text`; false when the reader has gone (`stowage backup ls … | head`).
fn write(text: &str) -> Result<bool, CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(CliError::Output(error.to_string())),
    }
}

pub async fn list(session: &mut Session, ls: BackupLs) -> Result<ExitCode, CliError> {
    let (namespace, pod, volume) = parse_volume(&ls.volume)?;
    // No name in the call: a NotFound may be about the backup or the volume, and the server's
    // sentence says which.
    let mut call = Call::new("ListBackupFiles", "files", "", "listing");
    call.action = format!(
        "listing the files of {namespace}/{pod}/{volume} in backup \"{}\"",
        ls.backup
    );
    let mut stream = session
        .client
        .list_backup_files(v1::ListBackupFilesRequest {
            backup_name: ls.backup.clone(),
            namespace,
            pod,
            volume,
            path: ls.path.unwrap_or_default(),
            recursive: ls.recursive,
        })
        .await
        .map_err(|status| session.fail(status, &call))?
        .into_inner();
    let mut printer = Printer {
        format: ls.output.format,
        printed: 0,
    };
    let mut begun = false;
    loop {
        let batch = match stream.message().await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(status) => {
                // What was printed stays; a JSON array is closed so it still parses.
                if begun && printer.printed > 0 {
                    write(&printer.end())?;
                }
                return Err(session.fail(status, &call));
            }
        };
        let mut text = if begun {
            String::new()
        } else {
            printer.begin()
        };
        begun = true;
        let entries: Vec<FileEntryView> = batch.entries.iter().map(Into::into).collect();
        text.push_str(&printer.batch(&entries)?);
        if !write(&text)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut text = if begun {
        String::new()
    } else {
        printer.begin()
    };
    text.push_str(&printer.end());
    write(&text)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: &str, mode: u32) -> FileEntryView {
        FileEntryView::from(&v1::FileEntry {
            path: path.into(),
            r#type: kind.into(),
            size: 2048,
            mode,
            mtime: Some(stowage_proto::prost_types::Timestamp {
                seconds: 1_764_633_600,
                nanos: 0,
            }),
            link_target: String::new(),
        })
    }

    #[test]
    fn modes_read_as_ls_shows_them() {
        // restic records a directory's mode with Go's directory bit set.
        assert_eq!(mode_text("dir", 0x8000_01ed), "drwxr-xr-x");
        assert_eq!(mode_text("file", 0o640), "-rw-r-----");
        assert_eq!(mode_text("symlink", 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn volumes_are_namespace_pod_volume() {
        assert_eq!(
            parse_volume("shop/db-0/data").unwrap(),
            ("shop".into(), "db-0".into(), "data".into())
        );
        for bad in ["shop/db-0", "shop//data", "a/b/c/d"] {
            let error = parse_volume(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn json_printed_in_batches_parses_back_into_the_entries() {
        let first = [
            entry("/data", "dir", 0x8000_01ed),
            entry("/data/a", "file", 0o644),
        ];
        let second = [entry("/data/b", "file", 0o600)];
        let mut printer = Printer {
            format: Format::Json,
            printed: 0,
        };
        let mut text = printer.begin();
        text.push_str(&printer.batch(&first).unwrap());
        text.push_str(&printer.batch(&second).unwrap());
        text.push_str(&printer.end());
        let parsed: Vec<FileEntryView> = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, [first.to_vec(), second.to_vec()].concat());
        assert_eq!(parsed[0].mtime.as_deref(), Some("2025-12-02T00:00:00Z"));

        let empty = Printer {
            format: Format::Json,
            printed: 0,
        };
        let parsed: Vec<FileEntryView> = serde_json::from_str(&empty.end()).unwrap();
        assert!(parsed.is_empty());
    }

    #[test]
    fn yaml_batches_make_one_sequence() {
        let mut printer = Printer {
            format: Format::Yaml,
            printed: 0,
        };
        let mut text = printer.batch(&[entry("/a", "file", 0o644)]).unwrap();
        text.push_str(&printer.batch(&[entry("/b", "file", 0o644)]).unwrap());
        let parsed: Vec<FileEntryView> = serde_yaml::from_str(&text).unwrap();
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn table_rows_have_fixed_columns() {
        let row = row(&entry("/data/a", "file", 0o644));
        assert_eq!(
            row,
            "-rw-r--r--     2.0 KiB  2025-12-02T00:00:00Z  /data/a\n"
        );
    }
}

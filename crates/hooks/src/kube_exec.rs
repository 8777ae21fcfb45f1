//! [`PodExec`] over the Kubernetes API: `pods/exec` through kube's WebSocket client, the exit
//! code read from the Status the API server sends on the status channel.

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Status};
use kube::{Api, Client, api::AttachParams};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::exec::{Capture, ExecError, ExecTarget, Output, PodExec};

/// Runs commands through the API server's `pods/exec` (stdout and stderr, no stdin, no tty).
#[derive(Clone)]
pub struct KubePodExec {
    client: Client,
}

impl KubePodExec {
    pub fn new(client: Client) -> KubePodExec {
        KubePodExec { client }
    }
}

impl PodExec for KubePodExec {
    async fn exec(
        &self,
        target: &ExecTarget,
        command: &[String],
        output: &mut Output,
    ) -> Result<i32, ExecError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &target.namespace);
        let params = AttachParams::default()
            .container(target.container.clone())
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut attached = pods
            .exec(&target.pod, command.iter().cloned(), &params)
            .await
            .map_err(refusal)?;
        let (Some(stdout), Some(stderr), Some(status)) =
            (attached.stdout(), attached.stderr(), attached.take_status())
        else {
            return Err(ExecError::Stream(
                "the exec session has no stdout, stderr or status".to_string(),
            ));
        };
        let Output {
            stdout: stdout_capture,
            stderr: stderr_capture,
        } = output;
        // Both streams end when the session does; read them at once so neither fills up.
        let (read_out, read_err) = futures::join!(
            copy_into(stdout, stdout_capture),
            copy_into(stderr, stderr_capture)
        );
        read_out
            .and(read_err)
            .map_err(|error| ExecError::Stream(format!("reading the command's output: {error}")))?;
        let status = status.await;
        attached
            .join()
            .await
            .map_err(|error| ExecError::Stream(error.to_string()))?;
        match status {
            Some(status) => exit_code(&status),
            None => Err(ExecError::Stream(
                "the connection ended before the command's exit status".to_string(),
            )),
        }
    }
}

async fn copy_into(
    mut reader: impl AsyncRead + Unpin,
    capture: &mut Capture,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 8192];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        capture.push(&buffer[..read]);
    }
}

/// The API server's refusal of the exec request, or a transport failure.
fn refusal(error: kube::Error) -> ExecError {
    match error {
        kube::Error::Api(status) => ExecError::Refused {
            code: status.code,
            reason: status.reason.clone(),
            message: status.message.clone(),
        },
        other => ExecError::Stream(other.to_string()),
    }
}

/// The exit code in the status channel's Status: `Success` is 0; `Failure` with reason
/// `NonZeroExitCode` carries it as the message of the cause `ExitCode`.
pub fn exit_code(status: &Status) -> Result<i32, ExecError> {
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let reason = status.reason.clone().unwrap_or_default();
    let message = status.message.clone().unwrap_or_default();
    if reason == "NonZeroExitCode" {
        let code = status
            .details
            .as_ref()
            .and_then(|details| details.causes.as_ref())
            .and_then(|causes| {
                causes
                    .iter()
                    .find(|cause| cause.reason.as_deref() == Some("ExitCode"))
            })
            .and_then(|cause| cause.message.as_deref())
            .and_then(|code| code.trim().parse::<i32>().ok());
        if let Some(code) = code {
            return Ok(code);
        }
    }
    Err(ExecError::Failed { reason, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: serde_json::Value) -> Status {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn exit_code_reads_the_api_servers_status() {
        assert_eq!(
            exit_code(&status(
                serde_json::json!({"metadata": {}, "status": "Success"})
            )),
            Ok(0)
        );
        let failure = status(serde_json::json!({
            "metadata": {}, "status": "Failure",
            "message": "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
        }));
        assert_eq!(exit_code(&failure), Ok(3));
        let internal = status(serde_json::json!({
            "metadata": {}, "status": "Failure",
            "message": "container not running", "reason": "InternalError",
        }));
        assert_eq!(
            exit_code(&internal),
            Err(ExecError::Failed {
                reason: "InternalError".into(),
                message: "container not running".into()
            })
        );
    }
}

//! The worker's GPUs: what `nvidia-smi` finds, by index and UUID, and what
//! `--gpus` and `--gpu-ids` make of it.

use cloudai_core::model::Gpu;

/// The GPUs `nvidia-smi` reports (none if it is missing or fails): the
/// CSV query first, then `nvidia-smi -L` for drivers without it.
pub(crate) fn detect() -> Vec<Gpu> {
    let run = |args: &[&str]| {
        std::process::Command::new("nvidia-smi")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let queried = run(&["--query-gpu=index,uuid,name", "--format=csv,noheader"])
        .map(|out| parse_query(&out))
        .unwrap_or_default();
    if !queried.is_empty() {
        return queried;
    }
    run(&["-L"]).map(|out| parse_list(&out)).unwrap_or_default()
}

/// Lines `0, GPU-8f…, NVIDIA A100-SXM4-40GB`.
fn parse_query(out: &str) -> Vec<Gpu> {
    out.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ',').map(str::trim);
            let index = fields.next()?.parse().ok()?;
            let uuid = fields.next().filter(|u| !u.is_empty()).map(String::from);
            let name = fields.next().filter(|n| !n.is_empty()).map(String::from);
            Some(Gpu { index, uuid, name })
        })
        .collect()
}

/// Lines `GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-8f…)`.
fn parse_list(out: &str) -> Vec<Gpu> {
    out.lines()
        .filter_map(|line| {
            let (index, rest) = line.strip_prefix("GPU ")?.split_once(':')?;
            let index = index.trim().parse().ok()?;
            let (name, uuid) = match rest.rsplit_once("(UUID:") {
                Some((name, uuid)) => (name, Some(uuid.trim().trim_end_matches(')').trim())),
                None => (rest, None),
            };
            Some(Gpu {
                index,
                uuid: uuid.filter(|u| !u.is_empty()).map(String::from),
                name: Some(name.trim().to_string()).filter(|n| !n.is_empty()),
            })
        })
        .collect()
}

/// The GPUs to offer: `ids` names them (each must be a detected one,
/// when any were detected), `count` takes the first so many, and with
/// neither every detected GPU is offered. Without detection, the named
/// or counted GPUs are offered by index.
pub(crate) fn resolve(
    detected: Vec<Gpu>,
    count: Option<u32>,
    ids: Option<&[u32]>,
) -> Result<Vec<Gpu>, String> {
    let found = || {
        let list: Vec<String> = detected.iter().map(|g| g.index.to_string()).collect();
        format!(
            "nvidia-smi found {}",
            if list.is_empty() {
                "none".into()
            } else {
                list.join(",")
            }
        )
    };
    let offered = match ids {
        Some(ids) => {
            let mut seen = std::collections::BTreeSet::new();
            ids.iter()
                .map(|i| {
                    if !seen.insert(*i) {
                        return Err(format!("--gpu-ids names GPU {i} twice"));
                    }
                    if detected.is_empty() {
                        return Ok(Gpu::indexed(*i));
                    }
                    detected
                        .iter()
                        .find(|g| g.index == *i)
                        .cloned()
                        .ok_or_else(|| format!("--gpu-ids names GPU {i}, but {}", found()))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        None => detected.clone(),
    };
    match count {
        None => Ok(offered),
        Some(n) if ids.is_some() && n as usize != offered.len() => Err(format!(
            "--gpus {n} disagrees with --gpu-ids, which names {}",
            offered.len()
        )),
        Some(n) if detected.is_empty() && ids.is_none() => Ok((0..n).map(Gpu::indexed).collect()),
        Some(n) if n as usize > offered.len() => Err(format!(
            "--gpus {n} is more than this host has: {}",
            found()
        )),
        Some(n) => Ok(offered.into_iter().take(n as usize).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: &str) -> Gpu {
        Gpu {
            index,
            uuid: Some(uuid.into()),
            name: Some("Tesla T4".into()),
        }
    }

    #[test]
    fn both_nvidia_smi_formats_give_index_uuid_and_name() {
        let query = "0, GPU-aaa, Tesla T4\n1, GPU-bbb, Tesla T4\n\n";
        assert_eq!(
            parse_query(query),
            vec![gpu(0, "GPU-aaa"), gpu(1, "GPU-bbb")]
        );
        let list = "GPU 0: Tesla T4 (UUID: GPU-aaa)\nGPU 1: Tesla T4 (UUID: GPU-bbb)\n";
        assert_eq!(parse_list(list), vec![gpu(0, "GPU-aaa"), gpu(1, "GPU-bbb")]);
        assert_eq!(
            parse_list("GPU 3: Old Card\nNo devices were found\n"),
            vec![Gpu {
                index: 3,
                uuid: None,
                name: Some("Old Card".into())
            }]
        );
    }

    #[test]
    fn flags_narrow_what_was_detected() {
        let four: Vec<Gpu> = (0..4).map(|i| gpu(i, &format!("GPU-{i}"))).collect();
        assert_eq!(resolve(four.clone(), None, None).unwrap(), four);
        assert_eq!(
            resolve(four.clone(), Some(2), None).unwrap(),
            four[..2].to_vec()
        );
        assert_eq!(
            resolve(four.clone(), None, Some(&[0, 2])).unwrap(),
            vec![four[0].clone(), four[2].clone()]
        );
        assert_eq!(resolve(four.clone(), Some(0), None).unwrap(), vec![]);
        for (count, ids) in [
            (Some(5), None),
            (None, Some(&[7][..])),
            (None, Some(&[1, 1][..])),
            (Some(1), Some(&[0, 2][..])),
        ] {
            assert!(
                resolve(four.clone(), count, ids).is_err(),
                "{count:?} {ids:?}"
            );
        }
    }

    #[test]
    fn without_nvidia_smi_gpus_are_named_by_index() {
        assert_eq!(resolve(vec![], None, None).unwrap(), vec![]);
        assert_eq!(
            resolve(vec![], Some(2), None).unwrap(),
            vec![Gpu::indexed(0), Gpu::indexed(1)]
        );
        assert_eq!(
            resolve(vec![], None, Some(&[4, 6])).unwrap(),
            vec![Gpu::indexed(4), Gpu::indexed(6)]
        );
    }
}

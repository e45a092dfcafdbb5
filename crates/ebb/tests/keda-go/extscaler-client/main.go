// keda-extscaler-client calls an external scaler the way KEDA's operator does, with KEDA's
// generated gRPC client (pkg/scalers/externalscaler), its TLS configuration (pkg/util) and
// its gRPC service config: IsActive, GetMetricSpec, then GetMetrics for the first spec's
// metric name; with --stream N, then StreamIsActive until N answers came.
//
//	keda-extscaler-client --addr host:port --name so-name --namespace ns
//	    --metadata '{"k":"v",...}' [--tls-ca ca.pem] [--timeout 10s] [--stream N]
//
// Without --tls-ca the connection is insecure plaintext; with it, TLS verified against that
// CA (KEDA's caCert). --timeout bounds connecting and each call; for --stream, each answer.
//
// Output, one JSON object on stdout:
//
//	{"isActive": true | null,
//	 "metricSpecs": [{"metricName": "m", "targetSize": 10, "targetSizeFloat": 10.5}],
//	 "metricValues": [{"metricName": "m", "metricValue": 3, "metricValueFloat": 3.2}],
//	 "stream": [false, true] (only with --stream),
//	 "error": null | {"call": "IsActive", "code": "InvalidArgument", "message": "..."}}
//
// The first failing call stops the sequence and is reported in "error" (exit 0); when the
// first spec list is empty GetMetrics is not called. Exit 1 (message on stderr, nothing on
// stdout) when no connection can be established; exit 2 on bad arguments.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	kedautil "github.com/kedacore/keda/v2/pkg/util"
)

// KEDA's gRPC service config for external scalers (pkg/scalers/external_scaler.go).
const grpcConfig = `{"loadBalancingConfig": [{"round_robin":{}}]}`

type metricSpec struct {
	MetricName      string  `json:"metricName"`
	TargetSize      int64   `json:"targetSize"`
	TargetSizeFloat float64 `json:"targetSizeFloat"`
}

type metricValue struct {
	MetricName       string  `json:"metricName"`
	MetricValue      int64   `json:"metricValue"`
	MetricValueFloat float64 `json:"metricValueFloat"`
}

type callError struct {
	Call    string `json:"call"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

type output struct {
	IsActive     *bool         `json:"isActive"`
	MetricSpecs  []metricSpec  `json:"metricSpecs"`
	MetricValues []metricValue `json:"metricValues"`
	Stream       []bool        `json:"stream,omitempty"`
	Error        *callError    `json:"error"`
}

func usage(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "keda-extscaler-client: "+format+"\n", args...)
	fmt.Fprintln(os.Stderr, "usage: keda-extscaler-client --addr host:port --name so-name --namespace ns --metadata '{\"k\":\"v\"}' [--tls-ca file] [--timeout 10s] [--stream N]")
	os.Exit(2)
}

func main() {
	flags := flag.NewFlagSet("keda-extscaler-client", flag.ContinueOnError)
	flags.SetOutput(os.Stderr)
	addr := flags.String("addr", "", "the external scaler's host:port (KEDA's scalerAddress)")
	name := flags.String("name", "", "the ScaledObject's name")
	namespace := flags.String("namespace", "", "the ScaledObject's namespace")
	metadataJSON := flags.String("metadata", "{}", "the trigger's metadata as a JSON object of strings")
	tlsCA := flags.String("tls-ca", "", "PEM file of the CA to verify the server with (TLS); plaintext without it")
	timeout := flags.Duration("timeout", 10*time.Second, "bound for connecting and for each call")
	stream := flags.Int("stream", 0, "then call StreamIsActive and wait for this many answers")
	if err := flags.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if flags.NArg() > 0 {
		usage("unexpected arguments: %v", flags.Args())
	}
	if *addr == "" || *name == "" || *namespace == "" {
		usage("--addr, --name and --namespace are required")
	}
	if *timeout <= 0 {
		usage("--timeout must be positive")
	}
	if *stream < 0 {
		usage("--stream must be 0 or more")
	}
	var metadata map[string]string
	if err := json.Unmarshal([]byte(*metadataJSON), &metadata); err != nil {
		usage("--metadata must be a JSON object of strings: %v", err)
	}
	if metadata == nil {
		metadata = map[string]string{}
	}

	creds := insecure.NewCredentials()
	if *tlsCA != "" {
		ca, err := os.ReadFile(*tlsCA)
		if err != nil {
			usage("--tls-ca: %v", err)
		}
		tlsConfig, err := kedautil.NewTLSConfig("", "", string(ca), false)
		if err != nil {
			usage("--tls-ca %s: %v", *tlsCA, err)
		}
		creds = credentials.NewTLS(tlsConfig)
	}
	conn, err := grpc.NewClient(*addr, grpc.WithDefaultServiceConfig(grpcConfig), grpc.WithTransportCredentials(creds))
	if err != nil {
		usage("--addr %q: %v", *addr, err)
	}
	defer conn.Close()
	client := pb.NewExternalScalerClient(conn)
	ref := &pb.ScaledObjectRef{Name: *name, Namespace: *namespace, ScalerMetadata: metadata}

	if err := connect(conn, *timeout); err != nil {
		// A call on a connection in TRANSIENT_FAILURE fails at once with the dial error.
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		_, callErr := client.IsActive(ctx, ref)
		cancel()
		detail := err.Error()
		if callErr != nil {
			detail = fmt.Sprintf("%v (%s)", err, status.Convert(callErr).Message())
		}
		fmt.Fprintf(os.Stderr, "keda-extscaler-client: cannot connect to %s: %s\n", *addr, detail)
		os.Exit(1)
	}

	out := output{MetricSpecs: []metricSpec{}, MetricValues: []metricValue{}}
	call := func(method string, f func(ctx context.Context) error) bool {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		if err := f(ctx); err != nil {
			s := status.Convert(err)
			out.Error = &callError{Call: method, Code: s.Code().String(), Message: s.Message()}
			return false
		}
		return true
	}

	_ = call("IsActive", func(ctx context.Context) error {
		r, err := client.IsActive(ctx, ref)
		if err == nil {
			active := r.GetResult()
			out.IsActive = &active
		}
		return err
	}) && call("GetMetricSpec", func(ctx context.Context) error {
		r, err := client.GetMetricSpec(ctx, ref)
		for _, s := range r.GetMetricSpecs() {
			out.MetricSpecs = append(out.MetricSpecs, metricSpec{
				MetricName: s.GetMetricName(), TargetSize: s.GetTargetSize(), TargetSizeFloat: s.GetTargetSizeFloat(),
			})
		}
		return err
	}) && len(out.MetricSpecs) > 0 && call("GetMetrics", func(ctx context.Context) error {
		r, err := client.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: ref, MetricName: out.MetricSpecs[0].MetricName})
		for _, v := range r.GetMetricValues() {
			out.MetricValues = append(out.MetricValues, metricValue{
				MetricName: v.GetMetricName(), MetricValue: v.GetMetricValue(), MetricValueFloat: v.GetMetricValueFloat(),
			})
		}
		return err
	}) && *stream > 0 && call("StreamIsActive", func(context.Context) error {
		// One context for the whole stream; each answer must come within --timeout.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		answers, err := client.StreamIsActive(ctx, ref)
		if err != nil {
			return err
		}
		out.Stream = []bool{}
		for len(out.Stream) < *stream {
			timer := time.AfterFunc(*timeout, cancel)
			r, err := answers.Recv()
			timer.Stop()
			if err != nil {
				return err
			}
			out.Stream = append(out.Stream, r.GetResult())
		}
		return nil
	})

	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "keda-extscaler-client: writing the result: %v\n", err)
		os.Exit(1)
	}
}

// connect establishes the connection (grpc.NewClient is lazy) or says why it cannot.
func connect(conn *grpc.ClientConn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn.Connect()
	for {
		state := conn.GetState()
		switch state {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			return fmt.Errorf("connection state %s", state)
		}
		if !conn.WaitForStateChange(ctx, state) {
			return fmt.Errorf("not ready within %s (state %s)", timeout, state)
		}
	}
}

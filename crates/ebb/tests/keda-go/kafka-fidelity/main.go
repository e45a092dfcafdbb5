// keda-kafka-fidelity runs KEDA's own kafka scaler (pkg/scalers, NewKafkaScaler) against a
// broker, so tests can hold ebb's model of it (crates/ebb-scaling/src/keda.rs) to the real
// thing.
//
// Input, one JSON object on stdin:
//
//	{"metadata": {"bootstrapServers": "127.0.0.1:9092", "topic": "t", "consumerGroup": "g",
//	              "lagThreshold": "10", ...any kafka trigger key, values as strings},
//	 "polls": 2,            // GetMetricsAndActivity calls (default 1; 0 only constructs)
//	 "pollIntervalMs": 0,   // sleep between polls
//	 "authParams": {...},   // optional: TriggerAuthentication parameters (strings)
//	 "resolvedEnv": {...}}  // optional: the scale target's environment (strings)
//
// Only the first JSON value on stdin is read (stdin need not be closed).
//
// Output, one JSON object on stdout (exit 0, scaler errors included):
//
//	{"error": null | "constructor error",
//	 "metricName": "s0-kafka-t" | null, "targetAverageValue": 10 | null,
//	 "polls": [{"metric": 12, "active": true, "error": null | "text"}]}
//
// "metric" is the sum of the returned metric values (AsApproximateFloat64). Exit 2 on bad
// input (message on stderr). KEDA's log goes to stderr; KEDA_FIDELITY_VERBOSE=1 adds its
// V(1) lines (per-partition decisions such as "invalid offset found ...").
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap/zapcore"
	v2 "k8s.io/api/autoscaling/v2"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	crzap "sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
)

type input struct {
	Metadata       map[string]string `json:"metadata"`
	Polls          *int              `json:"polls"`
	PollIntervalMs int64             `json:"pollIntervalMs"`
	AuthParams     map[string]string `json:"authParams"`
	ResolvedEnv    map[string]string `json:"resolvedEnv"`
}

type poll struct {
	Metric float64 `json:"metric"`
	Active bool    `json:"active"`
	Error  *string `json:"error"`
}

type output struct {
	Error              *string  `json:"error"`
	MetricName         *string  `json:"metricName"`
	TargetAverageValue *float64 `json:"targetAverageValue"`
	Polls              []poll   `json:"polls"`
}

// The ScaledObject the scaler belongs to, as KEDA's scalers_builder.go names it.
const (
	scaledObjectName      = "ebb-fidelity"
	scaledObjectNamespace = "default"
	scaledObjectKind      = "ScaledObject"
	triggerIndex          = 0
)

func badInput(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "keda-kafka-fidelity: "+format+"\n", args...)
	os.Exit(2)
}

func readInput() input {
	dec := json.NewDecoder(bufio.NewReader(os.Stdin))
	dec.DisallowUnknownFields()
	var in input
	if err := dec.Decode(&in); err != nil {
		badInput("stdin must hold one JSON object {\"metadata\": {string: string}, \"polls\": n, \"pollIntervalMs\": ms}: %v", err)
	}
	// Nothing after the object is read: a caller that keeps stdin open does not block us.
	if len(in.Metadata) == 0 {
		badInput("\"metadata\" (the kafka trigger's metadata) is missing or empty")
	}
	if in.Polls == nil {
		one := 1
		in.Polls = &one
	}
	if *in.Polls < 0 {
		badInput("\"polls\" must be >= 0, got %d", *in.Polls)
	}
	if in.PollIntervalMs < 0 {
		badInput("\"pollIntervalMs\" must be >= 0, got %d", in.PollIntervalMs)
	}
	if in.AuthParams == nil {
		in.AuthParams = map[string]string{}
	}
	if in.ResolvedEnv == nil {
		in.ResolvedEnv = map[string]string{}
	}
	return in
}

func errText(err error) *string {
	if err == nil {
		return nil
	}
	s := err.Error()
	return &s
}

func main() {
	if len(os.Args) > 1 {
		badInput("takes no arguments; reads one JSON object on stdin (see the source's header)")
	}
	level := zapcore.InfoLevel
	if os.Getenv("KEDA_FIDELITY_VERBOSE") != "" {
		level = zapcore.DebugLevel
	}
	// KEDA's scalers log through controller-runtime's logger: to stderr, without stack traces.
	logf.SetLogger(crzap.New(crzap.WriteTo(os.Stderr), crzap.Level(level), crzap.StacktraceLevel(zapcore.PanicLevel)))

	in := readInput()
	ctx := context.Background()

	// The fields KEDA's scalers_builder.go fills for a ScaledObject's trigger.
	config := &scalersconfig.ScalerConfig{
		ScalableObjectName:      scaledObjectName,
		ScalableObjectNamespace: scaledObjectNamespace,
		ScalableObjectType:      scaledObjectKind,
		TriggerName:             "",
		TriggerType:             "kafka",
		TriggerMetadata:         in.Metadata,
		ResolvedEnv:             in.ResolvedEnv,
		AuthParams:              in.AuthParams,
		GlobalHTTPTimeout:       3 * time.Second, // the operator's KEDA_HTTP_DEFAULT_TIMEOUT default
		TriggerIndex:            triggerIndex,
		TriggerUniqueKey:        fmt.Sprintf("%s-%s-%s-%d", scaledObjectKind, scaledObjectNamespace, scaledObjectName, triggerIndex),
		MetricType:              v2.AverageValueMetricType,
	}

	out := output{Polls: []poll{}}
	scaler, err := scalers.NewKafkaScaler(ctx, config)
	if err != nil {
		out.Error = errText(err)
		emit(out)
		return
	}
	defer func() {
		if err := scaler.Close(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "keda-kafka-fidelity: closing the scaler: %v\n", err)
		}
	}()

	specs := scaler.GetMetricSpecForScaling(ctx)
	if len(specs) != 1 || specs[0].External == nil {
		out.Error = errText(fmt.Errorf("expected one External metric spec from the kafka scaler, got %+v", specs))
		emit(out)
		return
	}
	name := specs[0].External.Metric.Name
	out.MetricName = &name
	if target := specs[0].External.Target.AverageValue; target != nil {
		v := target.AsApproximateFloat64()
		out.TargetAverageValue = &v
	}

	for i := 0; i < *in.Polls; i++ {
		if i > 0 && in.PollIntervalMs > 0 {
			time.Sleep(time.Duration(in.PollIntervalMs) * time.Millisecond)
		}
		values, active, err := scaler.GetMetricsAndActivity(ctx, name)
		p := poll{Active: active, Error: errText(err)}
		for _, v := range values {
			p.Metric += v.Value.AsApproximateFloat64()
		}
		out.Polls = append(out.Polls, p)
	}
	emit(out)
}

func emit(out output) {
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "keda-kafka-fidelity: writing the result: %v\n", err)
		os.Exit(1)
	}
}
